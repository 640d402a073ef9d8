"""PAI-EAS items (eas/items.py): the stored form is binary-safe; the request id defaults
to the index.
"""

from __future__ import annotations

from app.eas.items import Item


def test_item_encoding_is_binary_safe_and_defaults_the_request_id():
    item = Item(0, b"\n\x00\xff\n", {"a": "b"}, "image/png", "note")
    back = Item.decode(7, item.encode())
    assert (back.data, back.content_type, back.message) == (b"\n\x00\xff\n", "image/png", "note")
    assert back.tags == {"a": "b", "requestId": "7"}
