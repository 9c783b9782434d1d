"""REST ("Hydra") ids: unpadded URL-safe base64 of ciscospark://<cluster>/<TYPE>/<uuid>, built and taken apart."""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

PREFIX = "ciscospark://"
# The JS SDK's rule: the catalog names Webex's original cluster by its URN, REST ids call it "us".
US_CLUSTER_URN = "urn:TEAM:us-east-2_a"
US = "us"


class HydraId(NamedTuple):
    cluster: str
    kind: str
    uuid: str


def rest_id(kind: str, uuid: str, cluster: str = US) -> str:
    """The REST id of a conversation-service object, as the JS SDK builds it."""
    raw = f"{PREFIX}{cluster}/{kind}/{uuid}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def parse_rest_id(value: str) -> HydraId | None:
    """The parts of a REST id (either base64 alphabet, padded or not); None for anything else."""
    padded = value + "=" * (-len(value) % 4)
    try:
        decoded = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not decoded.startswith(PREFIX):
        return None
    cluster, sep, rest = decoded[len(PREFIX) :].rpartition("/")
    cluster, sep2, kind = cluster.rpartition("/")
    if not (sep and sep2 and cluster and kind and rest):
        return None
    return HydraId(cluster, kind, rest)


def dedupe_key(value: str) -> str:
    """The inbox key of an event: one spelling per REST id, so that the webhook and the websocket (and a
    padded or standard-alphabet copy) of one message are the same event. Ids Webex already minted come back
    unchanged, so keys stored before this existed still match."""
    parts = parse_rest_id(value)
    if parts is None:
        return value
    return rest_id(parts.kind, parts.uuid.lower(), parts.cluster)


def cluster_of(catalog_id: str) -> str:
    """The cluster of a host catalog entry id such as urn:TEAM:eu-central-1_k:conversation."""
    cluster = ":".join(catalog_id.split(":")[:3])
    return US if cluster in (US_CLUSTER_URN, "") else cluster
