"""tasks: the HTTP JSON API and the command intake (POST /commands)."""

import functions_framework
from flask import Request, Response

from duetide.web import api, entry

entry.start("tasks")
api.warm_up()


@functions_framework.http
def tasks(request: Request) -> Response:
    return api.handle(request)
