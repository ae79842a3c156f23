"""An agent that summarises text: the most frequent words that are not stop words."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

from policy_engine import BaseAgentPlugin, PluginContext


class SummarizerPlugin(BaseAgentPlugin):
    """Returns the top words of a text; reads its stop words from its own directory."""

    def initialize(self, ctx: PluginContext) -> None:
        super().initialize(ctx)
        self.stop_words = set((Path(ctx.plugin_dir) / "words.txt").read_text().split())
        self.top = int(ctx.config.get("plugins.summarizer.top", 3))
        ctx.hooks.register("document.saved", self.on_saved)

    def run(self, text: str = "", *args: Any, **kwargs: Any) -> list[str]:
        words = [w for w in re.findall(r"[a-z']+", text.lower()) if w not in self.stop_words]
        return [word for word, _ in collections.Counter(words).most_common(self.top)]

    def on_saved(self, text: str) -> list[str]:
        return self.run(text)
