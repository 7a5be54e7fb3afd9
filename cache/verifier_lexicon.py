"""Word tables of the near-miss rules (``tierwise.cache.verifier_rules``): units, number words, dates, cues."""

from __future__ import annotations


def _words(text: str) -> list[str]:
    return text.split()


def _table(groups: dict[str, str]) -> dict[str, str]:
    """``{"km": "km kms kilometre"}`` → every alias mapped to its canonical name."""
    return {alias: canonical for canonical, aliases in groups.items() for alias in _words(aliases)}


# A unit or currency written next to a number. Not "in" for inches: "5 in India" is no length.
UNITS = _table(
    {
        "km": "km kms kilometer kilometers kilometre kilometres",
        "mi": "mi mile miles",
        "m": "meter meters metre metres",
        "cm": "cm centimeter centimeters",
        "mm": "mm millimeter millimeters",
        "ft": "ft foot feet",
        "in": "inch inches",
        "kg": "kg kgs kilo kilos kilogram kilograms",
        "g": "gram grams gm gms",
        "lb": "lb lbs pound pounds",
        "l": "liter liters litre litres",
        "ml": "ml milliliter milliliters",
        "gb": "gb gigabyte gigabytes",
        "mb": "mb megabyte megabytes",
        "tb": "tb terabyte terabytes",
        "usd": "$ usd dollar dollars",
        "eur": "€ eur euro euros",
        "gbp": "£ gbp",
        "inr": "₹ rs inr rupee rupees",
        "%": "% percent per cent",
        "s": "sec secs second seconds",
        "min": "mins minute minutes",
        "h": "hr hrs hour hours",
        "day": "day days",
        "week": "week weeks",
        "month": "month months",
        "year": "yr yrs year years",
    }
)

SMALL_NUMBERS = {
    word: value
    for value, word in enumerate(
        _words(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen"
        )
    )
}
TENS = {
    word: 10 * (index + 2)
    for index, word in enumerate(_words("twenty thirty forty fifty sixty seventy eighty ninety"))
}
# "second" is left out: far more often the unit of time than the ordinal.
ORDINALS = {
    word: index + 1
    for index, word in enumerate(
        _words("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth")
    )
    if word != "second"
}
SCALES = {
    "hundred": 100,
    "thousand": 1_000,
    "k": 1_000,
    "lakh": 100_000,
    "lakhs": 100_000,
    "million": 1_000_000,
    "millions": 1_000_000,
    "m": 1_000_000,
    "crore": 10_000_000,
    "crores": 10_000_000,
    "billion": 1_000_000_000,
    "bn": 1_000_000_000,
}
NUMBER_WORDS = {**SMALL_NUMBERS, **TENS}

MONTHS = {
    name: index + 1
    for index, names in enumerate(
        [
            "january jan",
            "february feb",
            "march mar",
            "april apr",
            "may",
            "june jun",
            "july jul",
            "august aug",
            "september sep sept",
            "october oct",
            "november nov",
            "december dec",
        ]
    )
    for name in _words(names)
}
# Month names that are also everyday words count only when capitalised mid-sentence or next to a number.
AMBIGUOUS_MONTHS = frozenset(_words("may march mar jan dec sep oct nov aug jun jul apr"))
_DAYS = _words("monday tuesday wednesday thursday friday saturday sunday")
WEEKDAYS = {name: name[:3] for name in _DAYS} | {f"{name}s": name[:3] for name in _DAYS}
RELATIVE_DAYS = frozenset(_words("today tonight tomorrow yesterday weekend weekday weekdays midnight noon"))

# Exceptions ("except at the start", "unless it is empty", "excluding weekends") carve out part of
# what the sentence claims, as a negation does: a question with one and one without differ.
NEGATIONS = frozenset(
    _words(
        "not no never none nobody nothing nowhere neither nor without cannot unable dont doesnt didnt cant "
        "wont isnt arent wasnt werent shouldnt wouldnt couldnt havent hasnt hadnt mustnt neednt aint "
        "except unless excluding"
    )
)

# Capitalised words that are not names (greetings, titles, function words people capitalise).
NOT_ENTITIES = frozenset(
    _words(
        "i i'm i've i'd i'll ok okay mr mrs ms dr vs etc am pm a an the what how why when where who which "
        "is are can do does should would could will was were if government govt team"
    )
)
# Capitalised mid-sentence, these show a Title Case text rather than a name.
FUNCTION_WORDS = frozenset(
    _words(
        "a an the is are was were be to of in on for with at by from and or do does did how what why when "
        "where which who can should would could will my your his her their our it its this that as into"
    )
)

# Words too common to say what a question is about (for the learned verifier's overlap features).
STOPWORDS = frozenset(
    _words(
        "a an the is are was were be been being am do does did to of in on at for with by from and or but "
        "if it its this that these those i me my we our you your he his she her they them their what which "
        "who whom how why when where can could should would will shall may might must there here as so "
        "than then into about any some"
    )
)
QUESTION_WORDS = frozenset(_words("what how why when where who which is are can do does should"))

# Determiner → scope class: whose, or how many, of the noun that follows.
SCOPE_CLASSES = _table(
    {
        "self": "my mine",
        "we": "our",
        "you": "your",
        "other": "his her their its",
        "all": "all every each both entire whole",
        "one": "the this that a an",
    }
)
OWNERS = frozenset({"self", "we", "you", "other"})

# Words that make the order of two names matter when they stand between them: "Chicago before Berlin",
# "from Paris to Rome", "Messi better than Ronaldo". "X or Y", "X and Y", "X vs Y" are symmetric: not here.
ORDER_WORDS = frozenset(
    _words("before after than from to into beat beats defeat defeated ahead behind above below until till")
)

_ANTONYM_PAIRS = (
    "best worst, better worse, good bad, cheap expensive, cheapest priciest, increase decrease, "
    "increasing decreasing, more less, more fewer, most least, before after, buy sell, buying selling, "
    "bought sold, upload download, import export, start stop, enable disable, open close, win lose, "
    "winning losing, fast slow, faster slower, fastest slowest, advantages disadvantages, "
    "advantage disadvantage, positive negative, rich poor, love hate, easy hard, easy difficult, "
    "easiest hardest, high low, higher lower, highest lowest, maximum minimum, max min, legal illegal, "
    "true false, accept reject, add remove, include exclude, male female, men women, man woman, boy girl, "
    "boys girls, husband wife, boyfriend girlfriend, older younger, oldest youngest, big small, "
    "bigger smaller, biggest smallest, large small, larger smaller, largest smallest, long short, "
    "longer shorter, hot cold, early late, earlier later, first last, inside outside, input output, "
    "send receive, lend borrow, debit credit, deposit withdraw, encrypt decrypt, install uninstall, "
    "subscribe unsubscribe, login logout, lock unlock, block unblock, follow unfollow, connect disconnect, "
    "arrival departure, gain lose, gaining losing, pros cons, strengths weaknesses, above below, "
    "over under, north south, east west, internal external, private public, online offline, "
    "allowed forbidden, safe dangerous, success failure, successful unsuccessful"
)


def _antonyms() -> dict[str, frozenset[str]]:
    table: dict[str, frozenset[str]] = {}
    for pair in _ANTONYM_PAIRS.split(","):
        left, right = pair.split()
        table[left] = table.get(left, frozenset()) | {right}
        table[right] = table.get(right, frozenset()) | {left}
    return table


ANTONYMS = _antonyms()
