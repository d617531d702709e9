"""End-to-end evaluation: "RAG, fine-tuning, or both?" answered with the user's own data.

`metrics` (F1, containment, bootstrap), `qa` (the modes through the real pipeline, scored with
bot.answer.support), `adapter` (`--adapter auto`), `verdict`, `report` (HTML + JSON) and `suite` (the parts together).
"""
