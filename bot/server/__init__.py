"""The served product: FastAPI (OpenAI-compatible API) with the Gradio chat mounted at /."""
