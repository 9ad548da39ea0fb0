"""The API's security machinery behind ``api.auth``: users, tokens, sessions, the audit log
(``tables``, ``store``), password hashing (``passwords``), rate limits (``limits``) and the
route policy that authenticates and authorises every request (``policy``)."""
