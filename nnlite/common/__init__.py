"""Shared plumbing every stage may import: the one exception type (`errors`), atomic files and
checked JSON reads (`files`), dataclasses ↔ JSON/YAML (`schema`) and the command runner that turns
a `UserError` into one `error:` line with exit 2 (`cli`). It imports nothing else of nnlite."""
