"""Peers run side by side with Delayline: arq (Python) and BullMQ (Node), see ``driver``."""
