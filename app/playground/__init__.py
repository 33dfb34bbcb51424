"""The playground: a page to try and compare the served models in a browser.

`router` carries the page (`GET /playground` and its static files, open without an API key)
and the two API routes it needs, which are useful to any client: `GET /families` (each
family's model-card settings and example instructions) and `POST /prompt` (the exact model
input a family's prompt format makes of an instruction, what `lamini-serve prompt` prints).
Generation itself goes through `/v1/completions`, so it needs the key like every other call.
"""

from app.playground.routes import router

__all__ = ["router"]
