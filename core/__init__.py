"""The ground: settings, Redis key layout, text normalisation, language id, region and locale
codes, decay, statistics and the Lua prelude. Imports nothing else of Relevo's."""
