"""
The code under test in a user's project: it sends mail, and knows nothing of Twisted.

This file and the test modules beside it are copied into a fresh directory
and run by pytest there (tests/test_pytest_plugin.py), exactly as a
project that installed txsmtpsrv would run them; the README shows them.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from typing import Optional


def welcome(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "noreply@example.test"
    msg["To"] = to
    msg["Subject"] = "Welcome"
    msg.set_content("Hello and welcome!\n")
    return msg


def send_welcome(to: str, *, host: str, port: int, starttls: bool = False,
                 context: Optional[ssl.SSLContext] = None) -> None:
    """Send with smtplib, as most applications do."""
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        if starttls:
            smtp.starttls(context=context)
        smtp.send_message(welcome(to))


async def send_welcome_async(to: str, *, host: str, port: int, **tls: object) -> None:
    """Send with aiosmtplib, as asyncio applications do."""
    import aiosmtplib

    await aiosmtplib.send(welcome(to), hostname=host, port=port, timeout=10, **tls)
