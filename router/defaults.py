"""The routes ragtune ships with: `knowledge` (answer from the documents) and `skill` (style or task work).

The example messages are written for this project to cover support, legal, medical and general questions on
one side, and small talk, drafting, rewriting and translating on the other. They are deliberately generic: a
user's own labelled messages (`ragtune router train`) teach the router their domain.
"""

from __future__ import annotations

KNOWLEDGE_EXAMPLES = [
    # customer support: questions and problem reports that the documentation answers
    "How do I reset my password?",
    "How much does the premium plan cost per month?",
    "What is your refund policy?",
    "My order still hasn't arrived, where is it?",
    "I was charged twice for the same purchase",
    "Why was my payment declined?",
    "How long does shipping to Canada take?",
    "Can I change the delivery address after ordering?",
    "Is there a fee for cancelling my subscription?",
    "The app keeps crashing when I open settings",
    "How do I export my data to CSV?",
    "Which payment methods do you accept?",
    "My account got locked after too many login attempts",
    "Do you offer discounts for students?",
    "How can I upgrade to the business tier?",
    "Where can I find my invoice?",
    "What are your customer service opening hours?",
    "Does the warranty cover water damage?",
    # legal
    "What is the notice period for terminating an employment contract?",
    "Can my landlord keep the deposit for normal wear and tear?",
    "What does the liability clause in section 4 mean?",
    "Is a verbal agreement legally binding?",
    "How long do I have to file an appeal?",
    "What are the GDPR requirements for storing customer data?",
    "Who owns the copyright of work done by a contractor?",
    "What happens if a party breaches the non-disclosure agreement?",
    # medical
    "What are the common side effects of ibuprofen?",
    "What is the recommended dose of paracetamol for adults?",
    "What are the symptoms of type 2 diabetes?",
    "Can I take antibiotics while pregnant?",
    "How is high blood pressure treated?",
    "Is it safe to combine these two medications?",
    "How long is the flu contagious?",
    "What causes migraines?",
    # general facts and definitions
    "What is the capital of Australia?",
    "Explain how vaccines work",
    "Define inflation",
    "When was the company founded?",
    "Who wrote the employee handbook policy on remote work?",
    "What does API rate limiting mean?",
    "How many vacation days do employees get?",
    "What is the difference between a debit and a credit card?",
]

SKILL_EXAMPLES = [
    # small talk and conversation about the assistant itself
    "Hi there!",
    "Good morning, how are you today?",
    "Thanks, that was really helpful",
    "Great job, I appreciate it",
    "Bye, talk to you later",
    "Yes, go ahead",
    "No, that's not what I meant",
    "Are you a real person or a bot?",
    "What's your name?",
    "Who built you?",
    "What can you help me with?",
    "Do you have any hobbies?",
    "Tell me a joke",
    "Tell me something fun",
    "I'm bored, entertain me",
    "What do you think about the weather today?",
    # drafting
    "Write an email to my team about the schedule change",
    "Draft a polite reply to a customer complaining about a late delivery",
    "Write a short post for social media announcing our new product",
    "Compose a thank-you note to my colleague",
    "Draft a cover letter for a marketing position",
    "Write a tweet about our summer sale",
    "Write a short poem about autumn",
    "Draft a clause stating the contractor keeps the rights to pre-existing tools",
    "Write a patient-friendly leaflet text about sleeping well",
    "Give me three catchy slogans for a coffee shop",
    "Send a message to Anna saying I'll be late",
    # rewriting, summarising, translating
    "Make it shorter",
    "Rewrite this paragraph in a more formal tone",
    "Can you make that sound friendlier?",
    "Summarize the text above in three bullet points",
    "Fix the grammar in this sentence",
    "Rephrase your last answer in plain English",
    "Translate that into French",
    "How do you say good night in Spanish?",
    "Translate 'where is the train station' to German",
    "Simplify this for a ten year old",
    "Turn this into a numbered list",
    "Expand this into a full paragraph",
    "Make the tone more empathetic",
]

DEFAULT_ROUTES_DATA: list[dict] = [
    {
        "name": "knowledge",
        "description": "A question or problem that the documents answer: retrieve passages, then answer with sources.",
        "action": "knowledge",
        "examples": KNOWLEDGE_EXAMPLES,
    },
    {
        "name": "skill",
        "description": "Conversation, drafting, rewriting or translating: answer with the skill adapter or base model.",
        "action": "skill",
        "examples": SKILL_EXAMPLES,
    },
]
