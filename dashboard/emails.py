"""The text of every email the dashboard sends (plain text, no secrets)."""
from __future__ import annotations

_SUBJECTS = {
    "registered": "Your {site} registration",
    "exists": "Registration attempt on {site}",
    "approved": "Your {site} account is approved",
    "rejected": "Your {site} application",
    "suspended": "Your {site} account is suspended",
    "reactivated": "Your {site} account is active again",
    "closed": "Your {site} account is closed",
    "password_changed": "Your {site} password was changed",
    "reset": "Reset your {site} password",
    "email_changed": "The email address of your {site} account was changed",
    "email_changed_old": "The email address of your {site} account was changed",
    "email_change_undone": "The email change of your {site} account was undone",
}

_BODIES = {
    "registered": "Thank you for registering ({tier} tier). Your account is waiting for "
                  "approval by an administrator; we will write again when it is approved.",
    "exists": "Someone tried to register a new account with this email address, which "
              "already has an account. If this was you, sign in instead. If not, you can "
              "ignore this message.",
    "approved": "Your account has been approved. Sign in to create API keys.",
    "rejected": "Your account application was not approved.",
    "suspended": "Your account has been suspended: its API keys no longer work. Contact "
                 "the operator if you think this is a mistake.",
    "reactivated": "Your account is active again; your API keys work again.",
    "closed": "Your account is closed and its API keys are revoked. Your personal data "
              "will be deleted or anonymised after the retention period ({days:g} days).",
    "password_changed": "The password of your account was changed. If this was not you, "
                        "contact the operator at once.",
    "email_changed": "An administrator changed the email address of your account from "
                     "{old} to {new}. Sign in with {new} from now on. If this is not "
                     "what you asked for, contact the operator.",
    "email_changed_old": "An administrator changed the email address of your account from "
                         "{old} to {new}. Mail about the account now goes to {new}.\n\n"
                         "If this is not what you asked for, undo it: {how}\n\nUndoing "
                         "gives the account this address back, signs out every session, "
                         "cancels password-reset codes and revokes the API keys created "
                         "since the change. This works for {days} days.",
    "email_change_undone": "The change of your account's email address to {new} was "
                           "undone: the account has this address again. Every session was "
                           "signed out, pending password-reset codes were cancelled and "
                           "{revoked} API key(s) created since the change were revoked."
                           "{password}",
    "reset": "Someone (hopefully you) asked to reset the password of your account.\n\n"
             "{how}\n\nThe code works once, for {minutes} minutes. If you did not ask for "
             "this, ignore this message: your password stays as it is.",
}

KINDS = tuple(_SUBJECTS)


def render(kind: str, *, site: str, url: str, **values) -> tuple[str, str]:
    """``(subject, body)`` of one kind of message."""
    subject = _SUBJECTS[kind].format(site=site)
    body = _BODIES[kind].format(**values)
    link = f"\n\nDashboard: {url.rstrip('/')}/dashboard" if url else ""
    return subject, f"Hello,\n\n{body}{link}\n\n-- {site}\n"
