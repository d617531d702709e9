"""The routes ragtune ships with: `knowledge` (answer from the documents), `skill` (style or task work) and
`draft` (writing for someone else with facts from the documents: the skill adapter, after retrieval).

The example messages are written for this project to cover support, legal, medical, account and general
questions (facts, definitions) on one side, and small talk (also about the assistant itself), creative writing,
rewriting and translating on the other; `draft` holds e-mails, replies to customers, letters, notices and
policy summaries in any domain. They are deliberately generic: a user's own labelled messages (`ragtune router
train`) teach the router their domain. Untrained, these examples decide every message, so they were judged
by leave-one-source-out accuracy on the shared router data (docs/routing.md), never by the ood check set.
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
    "What does the word 'fiduciary' mean?",
    "Definition of amortisation",
    "Meaning of the term force majeure",
    "Who invented the printing press?",
    "How tall is the highest mountain in Europe?",
    "In which year did the first moon landing happen?",
    # account and money problems, in the words a customer uses
    "Why do you need a copy of my ID?",
    "My transfer still hasn't gone through",
    "I need to change the name on my account after getting married",
    "The card payment shows as pending, is that normal?",
    "How do I verify my identity?",
    "Is there a limit on how much I can withdraw?",
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
    "Who do you work for?",
    "Which company made you?",
    "Where are you from?",
    "How old are you?",
    "Do you have a favourite colour?",
    "Do you like music?",
    "Tell me a joke",
    "Tell me something fun",
    "I'm bored, entertain me",
    "What do you think about the weather today?",
    "What is the meaning of life?",
    "Yes, that's right",
    "That's wrong, try again",
    # creative and personal writing: no facts from the documents needed
    "Write a short post for social media announcing our new product",
    "Compose a thank-you note to my colleague",
    "Write a tweet about our summer sale",
    "Write a short poem about autumn",
    "Give me three catchy slogans for a coffee shop",
    "Send a message to Anna saying I'll be late",
    "Write a birthday message for my sister",
    "Make up a short story about a dragon",
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
    # reworking text the user gives: nothing to look up, so no retrieval
    "Rewrite the following text so it is easier to read: ...",
    "Polish this email before I send it",
    "Can you make this message sound less harsh?",
    "Reword this paragraph so it sounds more confident",
    "Check this text for spelling mistakes",
    "Make this reply to my colleague more polite",
]

# Drafting with facts: a piece of writing for someone else (an e-mail, a reply to a customer, a letter, a notice,
# a summary of a policy) that should state what the documents say. The route answers with the skill adapter and
# retrieves first, so the draft is held to the sources.
DRAFT_EXAMPLES = [
    "Write an email to my team about the schedule change",
    "Draft a polite reply to a customer complaining about a late delivery",
    "Reply to this customer who says the product arrived broken",
    "Write a response to a client asking why their invoice went up",
    "Draft an email to a customer explaining how to cancel their subscription",
    "Write a letter to a tenant about the rent increase",
    "Draft a notice to staff about the new holiday policy",
    "Summarise the travel expense policy for new employees",
    "Write a short summary of the warranty terms for our website",
    "Draft an announcement about the new opening hours",
    "Write a message to the supplier asking when the order will ship",
    "Draft a complaint to the airline about my lost luggage",
    "Draft a clause stating the contractor keeps the rights to pre-existing tools",
    "Write a patient-friendly leaflet text about sleeping well",
    "Draft a cover letter for a marketing position",
    "Write an email to a patient explaining how to prepare for the blood test",
    "Compose an answer to a customer who was charged twice",
    "Write a welcome e-mail for new customers explaining the onboarding steps",
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
        "description": "Conversation, creative writing, rewriting or translating: the skill adapter or base model.",
        "action": "skill",
        "examples": SKILL_EXAMPLES,
    },
    {
        "name": "draft",
        "description": "Drafting with facts (an e-mail, a customer reply, a letter, a policy summary): the skill "
        "adapter writes it from passages retrieved from the documents.",
        "action": "skill",
        "retrieve": True,
        "examples": DRAFT_EXAMPLES,
    },
]
