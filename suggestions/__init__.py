"""Real-time personalised query suggestions.

``SuggestionUpdater`` (the stream processor) learns decayed query counts per
region, locale and user from searches and the clicks and purchases after them;
``SuggestService`` (serving) completes a prefix from them, ranked by
``SuggestionRanker``. Both share one ``SuggestConfig``.
"""

from relevo.suggestions.config import SuggestConfig
from relevo.suggestions.filters import QueryFilter
from relevo.suggestions.processor import SuggestionUpdater
from relevo.suggestions.ranking import Candidate, RankWeights, Suggestion, SuggestionRanker
from relevo.suggestions.service import SuggestResult, SuggestService

__all__ = ["Candidate", "QueryFilter", "RankWeights", "SuggestionRanker", "SuggestConfig", "SuggestResult",
           "SuggestService", "Suggestion", "SuggestionUpdater"]
