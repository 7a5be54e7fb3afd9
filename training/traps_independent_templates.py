"""Templates and fillers of the independent cache traps (``training.traps_independent``).

Written without the rules' lexicon at hand and checked against it afterwards: no word here is
one the near-miss rules know, beyond ``ALLOWED_STOPWORDS``. A slot named with a trailing 2
("{city2}") takes a second, different value of the same filler list.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Template:
    a: str
    b: str


def _t(*pairs: tuple[str, str]) -> tuple[Template, ...]:
    return tuple(Template(a, b) for a, b in pairs)


SLOTS: dict[str, tuple[str, ...]] = {
    "plant": ("basil", "orchid", "fern", "cactus", "lavender", "bonsai", "rosemary", "succulent"),
    "pet": ("parrot", "hamster", "rabbit", "tortoise", "goldfish", "ferret", "gecko", "puppy"),
    "dish": ("risotto", "lasagna", "pancakes", "dumplings", "curry", "omelette", "paella", "flatbread"),
    "appliance": (
        "kettle",
        "dishwasher",
        "thermostat",
        "printer",
        "blender",
        "toaster",
        "treadmill",
        "doorbell",
    ),
    "hobby": ("chess", "guitar", "origami", "pottery", "calligraphy", "knitting", "juggling", "sketching"),
    "fabric": ("wool", "silk", "linen", "denim", "cashmere", "velvet"),
    "city": ("Oslo", "Lisbon", "Nairobi", "Hanoi", "Quito", "Perth", "Krakow", "Osaka"),
    "country": ("Peru", "Norway", "Vietnam", "Chile", "Egypt", "Portugal", "Morocco", "Iceland"),
    "app": ("Dropbox", "Slack", "Zoom", "Trello", "Notion", "Figma", "Discord", "Evernote"),
    "person": ("Tolstoy", "Darwin", "Newton", "Picasso", "Mozart", "Galileo", "Kafka", "Turing"),
    "watts": ("40", "60", "75", "100", "150"),
    "guests": ("4", "6", "8", "12", "20"),
    "gallons": ("5", "10", "20", "30", "55"),
    "degrees": ("160", "180", "200", "220", "250"),
    "year": ("1965", "1972", "1984", "1991", "1999"),
    "cup": ("1998", "2002", "2006", "2010", "2014"),
}

PARAPHRASE_TRAPS = _t(
    ("What foods are healthy for a {pet}?", "Which foods are toxic to a {pet}?"),
    ("How can I keep a {plant} alive indoors?", "How can I propagate a {plant} using cuttings?"),
    ("Why is the {appliance} leaking water?", "Why does the {appliance} use a lot of electricity?"),
    ("Is it possible to freeze {dish}?", "Is it possible to make {dish} vegan?"),
    ("What is the history of {hobby}?", "What equipment do I need for {hobby}?"),
    ("How should {fabric} garments be ironed?", "How should {fabric} garments be stored?"),
    ("Where did {dish} originate?", "What wine pairs with {dish}?"),
    ("Why does a {pet} bite people?", "Why does a {pet} hide constantly?"),
)
PARAPHRASES = _t(
    ("How often should I water a {plant}?", "How frequently does a {plant} need watering?"),
    ("How do I clean a {appliance}?", "What is the proper way to clean a {appliance}?"),
    ("Can you give me a recipe for {dish}?", "How do I cook {dish} at home?"),
    ("How can I improve at {hobby}?", "Tips to get skilled at {hobby}?"),
    ("Why is the {appliance} making a strange noise?", "What causes a weird noise from the {appliance}?"),
    ("What should I feed a {pet}?", "What is the ideal diet for a {pet}?"),
    ("How much sunlight does a {plant} need?", "What amount of light is ideal for a {plant}?"),
    ("How do I wash {fabric} clothes?", "What is the right method for laundering {fabric} garments?"),
    ("Where can I learn {hobby} for free?", "Free resources for learning {hobby}?"),
)

NEAR_REPEAT_TRAPS = _t(
    ("How do I repair a {appliance}?", "How do I replace a {appliance}?"),
    ("How often should I feed a {pet}?", "How often should I groom a {pet}?"),
    ("How often should I water a {plant}?", "How often should I prune a {plant}?"),
    ("How do I freeze {dish}?", "How do I reheat {dish}?"),
    ("How do I wash {fabric}?", "How do I dye {fabric}?"),
    ("Is {hobby} a relaxing hobby?", "Is {hobby} a lucrative hobby?"),
    ("Can a {pet} swim?", "Can a {pet} climb?"),
    ("How do I descale a {appliance}?", "How do I recycle a {appliance}?"),
)
# The paraphrase of a near repeat is the same text with a surface edit (``NEAR_REPEAT_EDITS``).
NEAR_REPEATS = _t(
    ("How do I descale a {appliance}?", ""),
    ("How often should I feed a {pet}?", ""),
    ("Why are the leaves of a {plant} turning yellow?", ""),
    ("Can I make {dish} in advance and reheat it?", ""),
    ("How do I shrink {fabric} clothes on purpose?", ""),
    ("What is the trickiest part of learning {hobby}?", ""),
    ("Is a {pet} a suitable pet for kids?", ""),
    ("How loud is a typical {appliance}?", ""),
)

NEGATION_TRAPS = _t(
    ("Which {pet} foods contain grain?", "Which {pet} foods lack grain?"),
    ("Why did the {appliance} pass the inspection?", "Why did the {appliance} fail the inspection?"),
    ("What happens if I remember to water a {plant}?", "What happens if I forget to water a {plant}?"),
    ("Can I make {dish} using eggs?", "Can I make {dish} omitting eggs?"),
    ("Why does a {pet} eat food?", "Why does a {pet} refuse food?"),
    ("Why does the {appliance} recognise the remote?", "Why does the {appliance} ignore the remote?"),
    ("What should I do when a {plant} keeps blooming?", "What should I do when a {plant} ceases blooming?"),
    ("Which {fabric} items shrink in the wash?", "Which {fabric} items resist shrinking in the wash?"),
    ("Does {app} keep the edit history?", "Does {app} discard the edit history?"),
    ("How can I get {app} alerts for mentions?", "How can I mute {app} alerts for mentions?"),
)
NEGATIONS = _t(
    ("Which {pet} foods lack grain?", "Which grain-free foods suit a {pet}?"),
    ("Why does a {pet} refuse food?", "What makes a {pet} refuse to eat?"),
    ("How can I mute {app} alerts for mentions?", "How do I silence mention alerts in {app}?"),
    ("Why did the {appliance} fail the inspection?", "What made the {appliance} fail the inspection?"),
    ("What happens if I forget to water a {plant}?", "What happens when a {plant} goes unwatered?"),
    ("Can I make {dish} omitting eggs?", "Is there an eggless recipe for {dish}?"),
    ("Why does the {appliance} ignore the remote?", "Why is the {appliance} unresponsive to the remote?"),
    ("Does {app} discard the edit history?", "Is the edit history deleted by {app}?"),
    ("Which {fabric} items resist shrinking in the wash?", "Which {fabric} garments are shrink-resistant?"),
)

ENTITY_TRAPS = _t(
    ("What currency is used in {country}?", "What currency is used in {country2}?"),
    ("How do I share a folder in {app}?", "How do I share a folder in {app2}?"),
    ("How far is the {city} airport from the centre?", "How far is the {city2} airport from the centre?"),
    ("What language do people speak in {city}?", "What language do people speak in {city2}?"),
    ("What did {person} achieve?", "What did {person2} achieve?"),
    ("Where was {person} born?", "Where was {person2} born?"),
    ("Do I need a visa for {country}?", "Do I need a visa for {country2}?"),
    ("What is the climate like in {city}?", "What is the climate like in {city2}?"),
    ("How do I set up notifications in {app}?", "How do I set up notifications in {app2}?"),
)
ENTITIES = _t(
    ("What currency is used in {country}?", "Which currency do they use in {country}?"),
    ("How do I share a folder in {app}?", "Sharing a folder with {app}: how is it done?"),
    (
        "How far is the {city} airport from the centre?",
        "What is the distance between {city} airport and downtown?",
    ),
    ("What language do people speak in {city}?", "Which language is spoken in {city}?"),
    ("What did {person} achieve?", "What is {person} famous for?"),
    ("Where was {person} born?", "What was the birthplace of {person}?"),
    ("Do I need a visa for {country}?", "Is a visa required to travel to {country}?"),
    ("What is the climate like in {city}?", "What kind of weather does {city} have?"),
    ("How do I set up notifications in {app}?", "How can I configure {app} notifications?"),
)

NUMBER_TRAPS = _t(
    (
        "Is a {watts} watt bulb bright enough for a kitchen?",
        "Is a {watts2} watt bulb bright enough for a kitchen?",
    ),
    ("How do I cook {dish} for {guests} guests?", "How do I cook {dish} for {guests2} guests?"),
    ("Is a {gallons} gallon tank enough for a {pet}?", "Is a {gallons2} gallon tank enough for a {pet}?"),
    ("Should I bake {dish} at {degrees} degrees?", "Should I bake {dish} at {degrees2} degrees?"),
    ("Who won the {cup} World Cup?", "Who won the {cup2} World Cup?"),
    ("What music topped the charts in {year}?", "What music topped the charts in {year2}?"),
    ("Can I seat {guests} guests at a round table?", "Can I seat {guests2} guests at a round table?"),
)
NUMBERS = _t(
    (
        "Is a {watts} watt bulb bright enough for a kitchen?",
        "For a kitchen, is a {watts}-watt bulb bright enough?",
    ),
    (
        "How do I cook {dish} for {guests} guests?",
        "What quantity of {dish} should I cook to feed {guests} guests?",
    ),
    (
        "Is a {gallons} gallon tank enough for a {pet}?",
        "Can a {pet} live comfortably in a {gallons} gallon tank?",
    ),
    (
        "Should I bake {dish} at {degrees} degrees?",
        "Is {degrees} degrees the right oven temperature for {dish}?",
    ),
    ("Who won the {cup} World Cup?", "Which country was the winner of the World Cup in {cup}?"),
    ("What music topped the charts in {year}?", "Which songs dominated the charts in {year}?"),
    ("Can I seat {guests} guests at a round table?", "Does a round table fit {guests} guests?"),
)

SCOPE_TRAPS = _t(
    ("How much does {app} cost for an individual?", "How much does {app} cost for a company?"),
    ("Can I delete a message for myself in {app}?", "Can I delete a message for everyone in {app}?"),
    ("Are {city} museums free for residents?", "Are {city} museums free for tourists?"),
    ("Is {app} free for students?", "Is {app} free for businesses?"),
    (
        "How do I share a file with a colleague in {app}?",
        "How do I share a file with anyone on the internet in {app}?",
    ),
    (
        "What tax do residents of {country} pay on savings?",
        "What tax do foreigners in {country} pay on savings?",
    ),
    ("How do I back up a single note in {app}?", "How do I back up the workspace in {app}?"),
    ("Can I archive a chat in {app} for myself?", "Can I archive a chat in {app} for everyone?"),
)
SCOPES = _t(
    ("How much does {app} cost for an individual?", "What is the price of {app} for a single person?"),
    ("Can I delete a message for everyone in {app}?", "In {app}, can a message be deleted for everyone?"),
    ("Is {app} free for students?", "Do students get {app} free of charge?"),
    ("Are {city} museums free for residents?", "Do residents of {city} get free museum entry?"),
    (
        "What tax do foreigners in {country} pay on savings?",
        "How are the savings of foreigners taxed in {country}?",
    ),
    ("How do I back up the workspace in {app}?", "How can I make a backup of the workspace in {app}?"),
    (
        "How do I share a file with a colleague in {app}?",
        "In {app}, how can I give a colleague access to a file?",
    ),
)

CATEGORIES: tuple[tuple[str, int, tuple[Template, ...]], ...] = (
    ("paraphrase", 0, PARAPHRASE_TRAPS),
    ("paraphrase", 1, PARAPHRASES),
    ("near_repeat", 0, NEAR_REPEAT_TRAPS),
    ("near_repeat", 1, NEAR_REPEATS),
    ("negation", 0, NEGATION_TRAPS),
    ("negation", 1, NEGATIONS),
    ("entity_swap", 0, ENTITY_TRAPS),
    ("entity_swap", 1, ENTITIES),
    ("number_date", 0, NUMBER_TRAPS),
    ("number_date", 1, NUMBERS),
    ("scope", 0, SCOPE_TRAPS),
    ("scope", 1, SCOPES),
)


def _lowercase_start(text: str, rng: random.Random) -> str:
    return text[0].lower() + text[1:]


def _drop_question_mark(text: str, rng: random.Random) -> str:
    return text.rstrip("?")


def _greeting(text: str, rng: random.Random) -> str:
    greeting = ("Hey, ", "Quick question: ", "Hi there, ")[rng.randrange(3)]
    return greeting + text[0].lower() + text[1:]


def _thanks(text: str, rng: random.Random) -> str:
    return text + (" Thanks!", " Cheers.", " thx")[rng.randrange(3)]


def _typo(text: str, rng: random.Random) -> str:
    """Two adjacent letters of the longest word swapped."""
    words = text.split(" ")
    index = max(range(len(words)), key=lambda i: len(words[i].strip("?,.")))
    word = words[index]
    at = 1 + rng.randrange(max(1, len(word.strip("?,.")) - 3))
    words[index] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return " ".join(words)


NEAR_REPEAT_EDITS: tuple[Callable[[str, random.Random], str], ...] = (
    _lowercase_start,
    _drop_question_mark,
    _greeting,
    _thanks,
    _typo,
)
