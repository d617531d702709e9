"""The conversation pipeline: memory → route → knowledge or skill → stream → persist."""

from bot.conversation.pipeline import Conversation, Token, TurnDone, TurnOptions, TurnStart, badge_text
from bot.conversation.prompts import NOT_FOUND

__all__ = ["NOT_FOUND", "Conversation", "Token", "TurnDone", "TurnOptions", "TurnStart", "badge_text"]
