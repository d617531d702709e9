"""The conversation pipeline: memory → route → knowledge or skill → stream → persist."""

from bot.conversation.pipeline import Conversation
from bot.conversation.prompts import NOT_FOUND
from bot.conversation.turn import RouteChoice, Token, Turn, TurnDone, TurnOptions, TurnStart, badge_text

__all__ = [
    "NOT_FOUND",
    "Conversation",
    "RouteChoice",
    "Token",
    "Turn",
    "TurnDone",
    "TurnOptions",
    "TurnStart",
    "badge_text",
]
