"""Where a new job's ending is to be announced: the callback URL the request gives, else its tenant's
default (jobs/webhooks.py), refused when it points where this deployment does not call or when there
is no secret to sign with."""

from __future__ import annotations

from jobs.settings import Settings
from jobs.webhooks import AddressRule, TenantWebhooks
from server.validation import InvalidRequest


class WebhooksNotConfigured(Exception):
    def __init__(self) -> None:
        super().__init__(
            "this deployment cannot sign webhooks: it has no WEBHOOK_SECRET and your tenant has no secret of its own "
            "(python -m server.apikeys webhook TENANT); ask its operators, or leave callback_url out and watch the job"
        )


class Callbacks:
    def __init__(self, settings: Settings) -> None:
        self._secret = settings.webhook_secret
        self._rule = AddressRule(settings.webhook_allowed_hosts)
        self._tenants = TenantWebhooks(settings.api_keys_file)

    def url_for(self, tenant: str, requested: str) -> str:
        """The URL to announce the job's ending to ("" for none)."""
        own = self._tenants.get(tenant)
        if requested and (problem := self._rule.url_problem(requested)):
            raise InvalidRequest([("callback_url", problem)])
        url = requested or (own.default_url if own else "")
        if url and not (own or self._secret):
            raise WebhooksNotConfigured()
        return url
