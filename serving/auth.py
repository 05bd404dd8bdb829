"""Optional bearer-token authentication for the model routes, as an ASGI middleware.

When the variable named by ServeConfig.token_env (KIDNEY_CT_API_TOKEN) is set, POSTs to /predict,
/explain and /preview need `Authorization: Bearer <token>`; probes (/healthz, /readyz, /livez),
/metrics and the page stay open so orchestrators and browsers can reach them.
"""

from __future__ import annotations

import os

from starlette.responses import JSONResponse

from serving.config import ServeConfig
from serving.inputs import RejectedUpload, check_token

PROTECTED = ("/predict", "/explain", "/preview", "/predict_series")


class BearerTokenAuth:
    def __init__(self, app, token_env: str = ServeConfig.token_env) -> None:
        self.app, self.token_env = app, token_env

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") in PROTECTED:
            given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            try:
                check_token(os.environ.get(self.token_env), given)
            except RejectedUpload as exc:
                response = JSONResponse({"error": str(exc)}, status_code=int(exc.status),
                                        headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
