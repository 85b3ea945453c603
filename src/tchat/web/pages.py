"""placeholder"""

from fastapi import FastAPI

from tchat.config import Settings


def mount(app: FastAPI, settings: Settings) -> None:
    return None
