"""E-mail through the provider's SMTP server (smtplib; blocking: call it in a thread)."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from agent.config import read_secret
from agent.fleet.config import SmtpSection


class MailError(Exception):
    """The SMTP server did not take the mail; the message is one sentence."""


class SmtpMailer:
    def __init__(self, settings: SmtpSection) -> None:
        self.settings = settings
        try:
            self._password = read_secret(settings.password, settings.password_file)
        except OSError as exc:
            raise MailError(
                f"cannot read [smtp] password_file {settings.password_file} ({exc.strerror}); "
                "create it or fix its permissions."
            ) from exc

    def send(self, recipients: list[str], subject: str, body: str, key: str) -> None:
        """One mail; `key` becomes part of the Message-ID so a resend is recognisable."""
        s = self.settings
        message = EmailMessage()
        message["From"] = s.from_address
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(idstring=key.replace(":", "."), domain="cpe-agent")
        message["X-CPE-Event"] = key
        message.set_content(body)
        try:
            smtp: smtplib.SMTP
            if s.ssl:
                smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s,
                                        context=ssl.create_default_context())  # fmt: skip
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
            with smtp:
                if s.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.username:
                    smtp.login(s.username, self._password or "")
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(
                f"the SMTP server {s.host}:{s.port} did not take the mail ({exc})"
            ) from exc
