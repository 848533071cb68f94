"""Real-time personalised query suggestions.

``SuggestionUpdater`` (the stream processor) learns decayed query counts per
region, locale and user from searches and the clicks and purchases after them;
``SuggestService`` (serving) completes a prefix from them, ranked by
``Ranker``. Both share one ``SuggestConfig``.
"""

from models.suggest.config import SuggestConfig
from models.suggest.filters import QueryFilter
from models.suggest.processor import SuggestionUpdater
from models.suggest.ranking import Candidate, Ranker, RankWeights, Suggestion
from models.suggest.service import SuggestResult, SuggestService

__all__ = ["Candidate", "QueryFilter", "RankWeights", "Ranker", "SuggestConfig", "SuggestResult",
           "SuggestService", "Suggestion", "SuggestionUpdater"]
