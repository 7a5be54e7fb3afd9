"""Hand-written cache traps: near-miss pairs that must not share an answer, and paraphrases that should.

Each family is a list of template pairs with slots, expanded over filler values. The
templates of each kind are split by a hash of their text: the "eval" share is written
to ``tests/data/cache_traps.jsonl`` (the committed evaluation file) and the "train" share
is what ``tierwise cache train-verifier`` may learn from, so the trap evaluation never sees a template
the verifier was trained on.

Run ``python -m tierwise.training.make_traps`` to rewrite the committed file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TrapSplit = Literal["train", "eval"]
EVAL_SHARE = 0.4
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "cache_traps.jsonl"


@dataclass(frozen=True, slots=True)
class Family:
    """Template pairs of one kind sharing slots; ``label`` is 1 when one answer serves both texts."""

    kind: str
    label: int
    templates: tuple[tuple[str, str], ...]
    slots: dict[str, tuple[str, ...]]


SERVICES = ("Netflix", "Spotify", "gym", "newspaper", "Adobe", "cloud storage")
CITIES = ("Paris", "Berlin", "Tokyo", "Madrid", "Chicago", "Toronto", "Mumbai", "Sydney")
COUNTRIES = ("France", "Germany", "Japan", "Brazil", "Canada", "India", "Italy", "Kenya")
LANGUAGES = ("Python", "Java", "Rust", "Go", "JavaScript", "Ruby")
THINGS = ("laptop", "phone", "bike", "car", "camera", "watch")
SOCIAL = ("Instagram", "TikTok", "Twitter", "LinkedIn", "YouTube", "Reddit")
FOODS = ("sugar", "eggs", "gluten", "milk", "salt", "butter")

FAMILIES: tuple[Family, ...] = (
    Family(
        "negation",
        0,
        (
            ("Cancel my {service} subscription.", "Don't cancel my {service} subscription."),
            ("Should I renew my {service} membership?", "Should I not renew my {service} membership?"),
            ("How do I bake a cake with {food}?", "How do I bake a cake without {food}?"),
            ("Is it safe to eat {food} every day?", "Is it never safe to eat {food} every day?"),
            ("Why does my {thing} turn on?", "Why doesn't my {thing} turn on?"),
            ("Can I return a {thing} I bought online?", "Can't I return a {thing} I bought online?"),
            ("Do I need a visa to visit {country}?", "Do I not need a visa to visit {country}?"),
            ("Which foods contain {food}?", "Which foods contain no {food}?"),
            ("Why do people like living in {city}?", "Why do people not like living in {city}?"),
            ("My {thing} is charging, what should I do?", "My {thing} is not charging, what should I do?"),
            (
                "Please send the invoice for my {service} plan.",
                "Please never send the invoice for my {service} plan.",
            ),
            ("I can log in to {service}, what now?", "I cannot log in to {service}, what now?"),
        ),
        {"service": SERVICES, "food": FOODS, "thing": THINGS, "country": COUNTRIES, "city": CITIES},
    ),
    Family(
        "number",
        0,
        (
            ("Book a table for {n} people tonight.", "Book a table for {m} people tonight."),
            ("Convert {n} km to miles.", "Convert {n} miles to km."),
            ("What is {n} percent of 250?", "What is {m} percent of 250?"),
            ("Is a {n} GB plan enough for streaming?", "Is a {m} GB plan enough for streaming?"),
            ("How long does it take to walk {n} miles?", "How long does it take to walk {m} miles?"),
            ("Buy {n} tickets for the {city} concert.", "Buy {m} tickets for the {city} concert."),
            ("Is ${n}00 a good price for a used {thing}?", "Is ${m}00 a good price for a used {thing}?"),
            ("How do I lose {n} kg in a month?", "How do I lose {n} pounds in a month?"),
            ("Split the bill between {word} friends.", "Split the bill between {word2} friends."),
            ("What happens if I sleep {n} hours a night?", "What happens if I sleep {m} hours a night?"),
            ("Set the thermostat to {n}0 degrees.", "Set the thermostat to {m}0 degrees."),
            (
                "Can I run a marathon after training for {n} weeks?",
                "Can I run a marathon after training for {m} weeks?",
            ),
        ),
        {
            "n": ("2", "3", "4", "5", "7"),
            "m": ("6", "8", "9", "12", "15"),
            "word": ("two", "three", "four", "five"),
            "word2": ("six", "seven", "eight", "ten"),
            "city": CITIES,
            "thing": THINGS,
        },
    ),
    Family(
        "date",
        0,
        (
            ("What's on at the {city} cinema on {day}?", "What's on at the {city} cinema on {day2}?"),
            ("Set an alarm for {h}am.", "Set an alarm for {h}pm."),
            ("Is the {city} museum open tomorrow?", "Was the {city} museum open yesterday?"),
            ("Book a flight to {city} for next week.", "Book a flight to {city} for last week."),
            ("What is the weather in {city} in {month}?", "What is the weather in {city} in {month2}?"),
            ("Schedule the meeting for {day} at 10:00.", "Schedule the meeting for {day} at 14:00."),
            ("Who won the election in {year}?", "Who won the election in {year2}?"),
            ("Remind me to call mom tomorrow.", "Remind me to call mom today."),
            ("Are banks in {country} open on {day}?", "Are banks in {country} open on {day2}?"),
            ("What were the top songs of {year}?", "What were the top songs of {year2}?"),
            ("Move my dentist appointment to {month} 3.", "Move my dentist appointment to {month} 13."),
        ),
        {
            "city": CITIES,
            "country": COUNTRIES,
            "day": ("Monday", "Tuesday", "Wednesday"),
            "day2": ("Friday", "Saturday", "Sunday"),
            "h": ("6", "7", "9"),
            "month": ("January", "March", "June"),
            "month2": ("July", "October", "December"),
            "year": ("2012", "2016", "2019"),
            "year2": ("2008", "2020", "2023"),
        },
    ),
    Family(
        "entity",
        0,
        (
            ("What is the capital of {country}?", "What is the capital of {country2}?"),
            (
                "How do I get from {city} to {city2} by train?",
                "How do I get from {city} to {city3} by train?",
            ),
            ("How do I install {lang} on Windows?", "How do I install {lang2} on Windows?"),
            ("What is the population of {country}?", "What is the population of {country2}?"),
            ("Best restaurants in {city}?", "Best restaurants in {city2}?"),
            ('What does "{quote}" mean?', 'What does "{quote2}" mean?'),
            ("Is {lang} faster than C?", "Is {lang2} faster than C?"),
            ("Who is the prime minister of {country}?", "Who is the prime minister of {country2}?"),
            ("How do I write a web server in {lang}?", "How do I write a web server in {lang2}?"),
            (
                "What is the time difference between {city} and London?",
                "What is the time difference between {city2} and London?",
            ),
            ("Does Amazon ship to {country}?", "Does eBay ship to {country}?"),
        ),
        {
            "country": COUNTRIES[:4],
            "country2": COUNTRIES[4:],
            "city": CITIES[:3],
            "city2": CITIES[3:6],
            "city3": CITIES[6:],
            "lang": LANGUAGES[:3],
            "lang2": LANGUAGES[3:],
            "quote": ("carpe diem", "deja vu", "status quo"),
            "quote2": ("carpe noctem", "deja lu", "status symbol"),
        },
    ),
    Family(
        "scope",
        0,
        (
            ("Delete my account.", "Delete all accounts."),
            ("Reset my password.", "Reset all passwords."),
            ("How do I hack my {thing}?", "How do I hack his {thing}?"),
            ("Show my orders from {city}.", "Show all orders from {city}."),
            ("Export my {service} playlists.", "Export their {service} playlists."),
            ("Can you read my messages?", "Can you read her messages?"),
            ("Refund my {service} payments.", "Refund all {service} payments."),
            ("Turn off my notifications.", "Turn off all notifications."),
            ("Block my contact on {social}.", "Block every contact on {social}."),
            ("Is it legal to track my {thing}?", "Is it legal to track their {thing}?"),
        ),
        {"thing": THINGS, "city": CITIES, "service": SERVICES, "social": SOCIAL},
    ),
    Family(
        "antonym",
        0,
        (
            ("Is now a good time to buy a {thing}?", "Is now a good time to sell a {thing}?"),
            ("How do I upload photos from my {thing}?", "How do I download photos to my {thing}?"),
            ("What is the best {lang} book?", "What is the worst {lang} book?"),
            (
                "How can I increase my {thing}'s battery life?",
                "How can I decrease my {thing}'s battery life?",
            ),
            ("How do I install {lang} on Linux?", "How do I uninstall {lang} on Linux?"),
            (
                "What are the advantages of living in {city}?",
                "What are the disadvantages of living in {city}?",
            ),
            ("Should I eat before running?", "Should I eat after running?"),
            ("How do I enable dark mode in {service}?", "How do I disable dark mode in {service}?"),
            ("Why is {city} so expensive?", "Why is {city} so cheap?"),
            ("How do I follow someone on {social}?", "How do I unfollow someone on {social}?"),
        ),
        {"thing": THINGS, "lang": LANGUAGES, "city": CITIES, "service": SERVICES, "social": SOCIAL},
    ),
    Family(
        # Same words, other order: nothing is missing, the order carries the meaning.
        "order",
        0,
        (
            ("Cheapest flights from {city} to {city2}?", "Cheapest flights from {city2} to {city}?"),
            ("Is {lang} better than {lang2} for beginners?", "Is {lang2} better than {lang} for beginners?"),
            ("How do I convert {lang} code to {lang2}?", "How do I convert {lang2} code to {lang}?"),
            ("Does the {city} train stop before {city2}?", "Does the {city2} train stop before {city}?"),
            (
                "How do I move files from my {thing} to my laptop?",
                "How do I move files from my laptop to my {thing}?",
            ),
        ),
        {
            "city": CITIES[:4],
            "city2": CITIES[4:],
            "lang": LANGUAGES[:3],
            "lang2": LANGUAGES[3:],
            "thing": THINGS[1:],
        },
    ),
    Family(
        "topic",
        0,
        (
            ("What are the symptoms of {illness}?", "What are the symptoms of {illness2}?"),
            ("How do I make {dish} at home?", "How do I make {dish2} at home?"),
            ("How do I remove {stain} stains from a shirt?", "How do I remove {stain2} stains from a shirt?"),
            ("Is it safe to give my dog {dish}?", "Is it safe to give my cat {dish}?"),
            ("How do I fix a leaking {fixture}?", "How do I fix a leaking {fixture2}?"),
            ("What is the best {instrument} for beginners?", "What is the best {instrument2} for beginners?"),
            ("How often should I water a {plant}?", "How often should I water a {plant2}?"),
            ("How do I change a {part} on my bike?", "How do I change a {part2} on my bike?"),
        ),
        {
            "illness": ("flu", "measles", "diabetes"),
            "illness2": ("covid", "chickenpox", "anemia"),
            "dish": ("pizza", "bread", "yogurt"),
            "dish2": ("pasta", "cheese", "ice cream"),
            "stain": ("wine", "coffee", "ink"),
            "stain2": ("blood", "grease", "grass"),
            "fixture": ("faucet", "toilet", "pipe"),
            "fixture2": ("roof", "shower", "radiator"),
            "instrument": ("guitar", "piano", "violin"),
            "instrument2": ("drum kit", "ukulele", "saxophone"),
            "plant": ("cactus", "fern", "orchid"),
            "plant2": ("lawn", "tomato plant", "bonsai"),
            "part": ("tire", "chain", "brake pad"),
            "part2": ("saddle", "pedal", "derailleur"),
        },
    ),
    Family(
        "paraphrase",
        1,
        (
            ("How do I cancel my {service} subscription?", "How can I cancel my {service} subscription?"),
            ("What is the capital of {country}?", "What's the capital city of {country}?"),
            ("How long does it take to walk 5 miles?", "How long does it take to walk five miles?"),
            ("Set an alarm for 5pm.", "Set an alarm for 17:00."),
            ("Is $500 a good price for a used {thing}?", "Is 500 dollars a good price for a used {thing}?"),
            ("How do I learn {lang}?", "How can I learn {lang}?"),
            ("What is the best way to learn {lang}?", "what is the best way to learn {lang_lower}"),
            ("Why doesn't my {thing} turn on?", "Why does my {thing} not turn on?"),
            ("Best restaurants in {city}?", "What are the best restaurants in {city}?"),
            ("How do I reset my {service} password?", "How can I reset my {service} password?"),
            ("What is the weather in {city} tomorrow?", "What will the weather be like in {city} tomorrow?"),
            ("Can I bring my {thing} on a plane?", "Am I allowed to bring my {thing} on a plane?"),
            ("How do I make a cake without {food}?", "How can I bake a cake without {food}?"),
            ("What are the benefits of drinking water?", "What are the health benefits of drinking water?"),
            ("How do I lose 10 kg in a month?", "How can I lose 10 kilograms in one month?"),
            ("What is the population of {country}?", "How many people live in {country}?"),
            ("Translate 'good morning' into French.", "How do you say 'good morning' in French?"),
            ("How do I delete my {service} account?", "How can I delete my {service} account?"),
        ),
        {
            "service": SERVICES,
            "country": COUNTRIES,
            "thing": THINGS,
            "lang": LANGUAGES,
            "city": CITIES,
            "food": FOODS,
        },
    ),
)


@dataclass(frozen=True, slots=True)
class Conversation:
    """A follow-up whose meaning lives in earlier turns; ``label`` 1 only when the history is the same."""

    history_a: tuple[str, str]
    history_b: tuple[str, str]
    last_a: str
    last_b: str
    label: int


CONVERSATIONS: tuple[Conversation, ...] = (
    Conversation(
        ("I have a Netflix premium plan.", "Got it: Netflix premium."),
        ("I have a Spotify family plan.", "Got it: Spotify family."),
        "Cancel it.",
        "Cancel it.",
        0,
    ),
    Conversation(
        ("My flight to Paris is on Monday.", "Noted, Paris on Monday."),
        ("My flight to Tokyo is on Friday.", "Noted, Tokyo on Friday."),
        "Can you move it one day later?",
        "Can you move it one day later?",
        0,
    ),
    Conversation(
        ("Translate 'thank you' into German.", "Danke."),
        ("Translate 'thank you' into Japanese.", "Arigatou."),
        "Now say it more formally.",
        "Now say it more formally.",
        0,
    ),
    Conversation(
        ("I'm writing a Python script.", "Happy to help with your Python script."),
        ("I'm writing a Java program.", "Happy to help with your Java program."),
        "How do I read a file?",
        "How do I read a file?",
        0,
    ),
    Conversation(
        ("Recommend a laptop under $800.", "Consider a mid-range ultrabook."),
        ("Recommend a laptop under $2000.", "Consider a high-end workstation."),
        "What about battery life?",
        "What about battery life?",
        0,
    ),
    Conversation(
        ("My order number is 4411.", "I found order 4411."),
        ("My order number is 9823.", "I found order 9823."),
        "Where is it now?",
        "Where is it now?",
        0,
    ),
    Conversation(
        ("I have a Netflix premium plan.", "Got it: Netflix premium."),
        ("I have a Netflix premium plan.", "Got it: Netflix premium."),
        "Cancel it.",
        "Please cancel it.",
        1,
    ),
    Conversation(
        ("I'm writing a Python script.", "Happy to help with your Python script."),
        ("I'm writing a Python script.", "Happy to help with your Python script."),
        "How do I read a file?",
        "How can I read a file?",
        1,
    ),
    Conversation(
        ("Recommend a laptop under $800.", "Consider a mid-range ultrabook."),
        ("Recommend a laptop under $800.", "Consider a mid-range ultrabook."),
        "What about battery life?",
        "And how is the battery life?",
        1,
    ),
    Conversation(
        ("Translate 'thank you' into German.", "Danke."),
        ("Translate 'thank you' into German.", "Danke."),
        "Now say it more formally.",
        "Now say it in a more formal way.",
        1,
    ),
)


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def _template_split(templates: tuple[tuple[str, str], ...]) -> dict[tuple[str, str], TrapSplit]:
    """The first EVAL_SHARE of templates in hash order go to "eval", so every kind has both splits."""
    ordered = sorted(templates, key=lambda pair: _unit_hash(pair[0] + "\x00" + pair[1]))
    cut = max(1, round(EVAL_SHARE * len(ordered)))
    return {pair: ("eval" if index < cut else "train") for index, pair in enumerate(ordered)}


_LOWER = "_lower"  # "{lang_lower}" is the "{lang}" filler in lower case


def _fill(template_a: str, template_b: str, slots: dict[str, tuple[str, ...]]) -> Iterator[tuple[str, str]]:
    both = template_a + template_b
    names = sorted(name for name in slots if "{" + name + "}" in both or "{" + name + _LOWER + "}" in both)
    for values in itertools.product(*(slots[name] for name in names)):
        filled = dict(zip(names, values, strict=True))
        filled |= {name + _LOWER: value.lower() for name, value in filled.items()}
        yield template_a.format(**filled), template_b.format(**filled)


def _messages(history: tuple[str, str], last: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": history[0]},
        {"role": "assistant", "content": history[1]},
        {"role": "user", "content": last},
    ]


def generate(split: TrapSplit, per_template: int = 8) -> list[dict[str, Any]]:
    """Trap rows of one split; each template contributes at most ``per_template`` fillings, spread evenly."""
    rows: list[dict[str, Any]] = []
    for family in FAMILIES:
        assignment = _template_split(family.templates)
        for template in family.templates:
            if assignment[template] != split:
                continue
            fillings = list(dict.fromkeys(_fill(*template, family.slots)))
            step = max(1, len(fillings) // per_template)
            for a, b in fillings[::step][:per_template]:
                rows.append({"a": a, "b": b, "label": family.label, "kind": family.kind})
    if split == "eval":
        # Follow-ups are the partition's job, not something to learn: all of them are for evaluation.
        rows.extend(
            {
                "a": _messages(conversation.history_a, conversation.last_a),
                "b": _messages(conversation.history_b, conversation.last_b),
                "label": conversation.label,
                "kind": "conversation",
            }
            for conversation in CONVERSATIONS
        )
    return rows


def write_traps(path: Path = DEFAULT_OUTPUT) -> int:
    rows = generate("eval")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


if __name__ == "__main__":
    print(f"wrote {write_traps()} trap pairs to {DEFAULT_OUTPUT}")
