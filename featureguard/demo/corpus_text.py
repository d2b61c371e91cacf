"""Templated messages for the demo corpus: PII, manipulation, and plain prose.

Templates hold twin slots, `{slot}`, filled with either a positive value (a PII item, a pressure
phrase) or a neutral one, so twins differ only inside the slots. `{name|filler}` gives the neutral
filler inline. Surface "ood" holds unseen PII formats and names, and new manipulation templates and
phrases; meanings are unchanged.
"""

from __future__ import annotations

import random
import re

Rendered = tuple[str, tuple[tuple[int, int], ...], tuple[str, ...]]

_PII_TEMPLATES = (
    "Hi {name|there}, your order #{num} has shipped. Questions? Email {email|the support desk}"
    " or call {phone|the help line}.",
    "Please update the record for {name|this customer}: email {email|on file},"
    " phone {phone|unchanged}.",
    "Meeting moved to {day}. {name|The team lead} will send the notes to {email|the shared inbox}.",
    "Deliver the {item} to {name|the front desk} at {address|the main office} by {day}.",
    "New signup from {name|a new user}, reachable at {phone|the usual number}.",
    "Call {phone|the clinic} to confirm the visit on {day}, or write to {email|the office}.",
)
_MANIP_TEMPLATES = {
    "train": (
        "{urgency} Your {product} plan renews on {day}.",
        "Hello, your {product} invoice is ready. {guilt}",
        "Your {product} trial ends on {day}. {loss}",
        "Please update your payment details for {product}. {urgency} {loss}",
        "We noticed you have not opened {product} since {day}. {guilt}",
    ),
    "ood": (
        "Dear member. {loss} Please review your {product} settings.",
        "A note about your {product} order from {day}: {urgency}",
        "{guilt} We only ask you to keep your {product} membership.",
        "Notice regarding {product}: {loss} {urgency}",
    ),
}
_PRESSURE = {
    "train": {
        "urgency": (
            "Act now, this offer expires in 10 minutes!",
            "Hurry, only 2 spots are left!",
            "This is your last chance to respond.",
            "Reply immediately or it will be too late.",
            "Don't wait, the deal ends tonight.",
        ),
        "guilt": (
            "After everything we have done for you, you owe us this.",
            "You would let the whole team down if you said no.",
            "We trusted you, please don't disappoint us.",
            "It will be your fault if this fails.",
        ),
        "loss": (
            "If you do not pay today, you will lose all your files.",
            "Your account will be permanently deleted.",
            "You will lose access forever.",
        ),
    },
    "ood": {
        "urgency": (
            "The clock is ticking, answer within the next 5 minutes!",
            "Time is running out and seconds are left to decide.",
            "Final notice: respond before midnight.",
        ),
        "guilt": (
            "How could you ignore us after all we have given you?",
            "Think of how ashamed your family would feel.",
            "Only a selfish person would walk away now.",
        ),
        "loss": (
            "Everything you saved will be gone for good.",
            "Say goodbye to your rewards unless you confirm.",
            "Your data will vanish and never come back.",
        ),
    },
}
_NEUTRAL = {
    "train": {
        "urgency": (
            "Here is a short update.",
            "You can reply when it suits you.",
            "There is no rush on this.",
        ),
        "guilt": (
            "Thanks for being with us.",
            "We appreciate your time.",
            "Let us know what you think.",
        ),
        "loss": (
            "Your files remain available.",
            "You can change this in settings.",
            "Nothing changes for your account.",
        ),
    },
    "ood": {
        "urgency": ("Here is a quick note for you.", "Answer whenever is convenient."),
        "guilt": ("We value your feedback.", "Thank you for your support so far."),
        "loss": ("Your saved items stay where they are.", "Settings can be adjusted later."),
    },
}
_PROSE_TEMPLATES = {
    "train": (
        "Once upon a time, a little {animal} named {pet} lived near the {place}. Every day {pet}"
        " liked to {activity}. One morning {pet} found a {object} and smiled.",
        "{pet} and {pet2} went to the {place}. They saw a big {object}. \"Let's {activity}"
        ' together!" said {pet}. It was a happy day.',
        "The sun was warm over the {place}. A {animal} named {pet} wanted to {activity}, so {pet}"
        " asked {pet2} for help. They became good friends.",
    ),
    "ood": (
        "In a small town by the {place}, {pet} the {animal} kept a {object} under the bed. At"
        " night {pet} dreamed of a way to {activity}.",
        '{pet2} had never seen a {object} before. "Can we {activity}?" asked {pet2}. {pet}'
        " laughed and said yes.",
    ),
}
_WORDS = {
    "first": {
        "train": ("Alice", "Brian", "Carla", "David", "Emma", "Farid", "Grace", "Hiro"),
        "ood": ("Ingrid", "Tomasz", "Yusuf", "Leilani", "Oksana", "Bartholomew"),
    },
    "last": {
        "train": ("Walker", "Chen", "Novak", "Ortiz", "Patel", "Kim", "Reyes", "Schmidt"),
        "ood": ("Haverford", "Okonkwo", "Lindqvist", "Abernathy", "Vasquez"),
    },
    "street": {
        "train": ("Oak", "Maple", "Elm", "Cedar", "Mill"),
        "ood": ("Juniper", "Heron", "Quarry", "Alder"),
    },
    "product": {
        "train": ("cloud storage", "music", "fitness", "news"),
        "ood": ("photo backup", "language course", "meal kit"),
    },
}
_PLAIN = {
    "day": ("Monday", "Tuesday", "Friday", "the 12th", "the 3rd"),
    "item": ("parcel", "laptop", "documents", "keys"),
    "animal": ("cat", "dog", "rabbit", "bird", "fox", "bear"),
    "pet": ("Lily", "Tom", "Ben", "Mia", "Max", "Sue"),
    "place": ("park", "river", "forest", "garden", "hill"),
    "activity": ("play", "sing", "jump", "draw", "dance", "build a fort"),
    "object": ("ball", "kite", "red box", "shiny stone", "book"),
}
_SLOT = re.compile(r"\{(\w+)(?:\|([^}]*))?\}")


def _parse(template: str) -> tuple[str | tuple[str, str | None], ...]:
    parts: list[str | tuple[str, str | None]] = []
    last = 0
    for m in _SLOT.finditer(template):
        parts += [template[last : m.start()], (m.group(1), m.group(2))]
        last = m.end()
    parts.append(template[last:])
    return tuple(p for p in parts if p != "")


_PARSED = {
    t: _parse(t)
    for group in (_PII_TEMPLATES, *_MANIP_TEMPLATES.values(), *_PROSE_TEMPLATES.values())
    for t in group
}


def _render(template: str, values: dict[str, str | tuple[str, str]], positive: bool) -> Rendered:
    """Fill a template; tuple values are (neutral, positive) twin slots, whose spans are kept."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    kinds: list[str] = []
    pos = 0
    for part in _PARSED[template]:
        if isinstance(part, str):
            s = part
        else:
            slot, filler = part
            value = values[slot]
            if isinstance(value, tuple):
                s = value[1] if positive else (filler if filler is not None else value[0])
                if positive:
                    spans.append((pos, pos + len(s)))
                    kinds.append(slot)
            else:
                s = value
        out.append(s)
        pos += len(s)
    return "".join(out), tuple(spans), tuple(kinds)


def _phone(rng: random.Random, surface: str) -> str:
    a, b, c = rng.randrange(200, 999), rng.randrange(200, 999), rng.randrange(0, 10000)
    form = rng.randrange(3)
    if surface == "train":
        return f"({a}) {b}-{c:04d}" if form else f"{a}-{b}-{c:04d}"
    if form == 0:
        return f"+44 20 {rng.randrange(7000, 8999)} {c:04d}"
    return f"{a}.{b}.{c:04d}" if form == 1 else f"+1 {a} {b} {c:04d}"


def _email(rng: random.Random, surface: str, first: str, last: str) -> str:
    user = f"{first}.{last}" if rng.random() < 0.6 else f"{first[0]}{last}"
    user = user.lower()
    if surface == "train":
        return f"{user}@{rng.choice(('example.com', 'mail.example.org', 'corp.test'))}"
    host, tld = rng.choice((("inbox", "net"), ("postbox", "org"), ("example", "com")))
    if rng.random() < 0.5:
        return f"{user} [at] {host} [dot] {tld}"
    return f"{user}(at){host}(dot){tld}"


def _address(rng: random.Random, surface: str) -> str:
    street = rng.choice(_WORDS["street"][surface])
    if surface == "train":
        return f"{rng.randrange(1, 400)} {street} {rng.choice(('Street', 'Road', 'Avenue'))}"
    return f"Flat {rng.randrange(1, 20)}, {rng.randrange(1, 400)} {street} " + rng.choice(
        ("Lane", "Close", "Crescent")
    )


def _plain(rng: random.Random) -> dict[str, str | tuple[str, str]]:
    values: dict[str, str | tuple[str, str]] = {k: rng.choice(v) for k, v in _PLAIN.items()}
    values["num"] = str(rng.randrange(1000, 99999))
    return values


def pii_pair(rng: random.Random, surface: str) -> tuple[Rendered, Rendered]:
    """(without PII, with PII) from one template and one draw."""
    template = rng.choice(_PII_TEMPLATES)
    first, last = rng.choice(_WORDS["first"][surface]), rng.choice(_WORDS["last"][surface])
    values = _plain(rng)
    values |= {
        "name": ("", f"{first} {last}"),
        "email": ("", _email(rng, surface, first, last)),
        "phone": ("", _phone(rng, surface)),
        "address": ("", _address(rng, surface)),
    }
    return _render(template, values, False), _render(template, values, True)


def manipulation_pair(rng: random.Random, surface: str) -> tuple[Rendered, Rendered]:
    """(neutral twin, manipulative) from one template and one draw."""
    template = rng.choice(_MANIP_TEMPLATES[surface])
    values = _plain(rng)
    values["product"] = rng.choice(_WORDS["product"][surface])
    for tactic in ("urgency", "guilt", "loss"):
        values[tactic] = (
            rng.choice(_NEUTRAL[surface][tactic]),
            rng.choice(_PRESSURE[surface][tactic]),
        )
    return _render(template, values, False), _render(template, values, True)


def prose(rng: random.Random, surface: str) -> str:
    """A TinyStories-like paragraph (no PII, no pressure)."""
    template = rng.choice(_PROSE_TEMPLATES[surface])
    values = _plain(rng)
    values["pet2"] = rng.choice([p for p in _PLAIN["pet"] if p != values["pet"]])
    return _render(template, values, False)[0]
