"""Each near-miss rule: rejects the near-miss, accepts the harmless rewording, in both directions."""

from __future__ import annotations

import pytest

from tierwise.cache.verifier_rules import RULES, RULES_BY_NAME, RuleVerifier, rule_differences, signature

# (rule, near-miss pair that must fire, harmless pair that must not fire)
CASES = [
    (
        "number",
        ("Book a table for 4 people.", "Book a table for 5 people."),
        ("for 4 people", "for four people"),
    ),
    ("number", ("Convert 5 km to miles.", "Convert 5 miles to miles."), ("Walk 5 km.", "Walk 5 kilometres.")),
    ("number", ("Is $50 a good price?", "Is $500 a good price?"), ("Is $500 fair?", "Is 500 dollars fair?")),
    (
        "number",
        ("Lose 10 kg in 1 month.", "Lose 10 kg in 2 months."),
        ("Lose 10 kg in a month.", "Lose 10 kg in one month."),
    ),
    ("number", ("A budget of 2 million.", "A budget of 3 million."), ("1,000 users", "1000 users")),
    ("number", ("twenty one tips", "twenty two tips"), ("twenty one tips", "21 tips")),
    ("date", ("Open on Monday?", "Open on Tuesday?"), ("Open on Monday?", "Open on monday?")),
    ("date", ("Alarm at 5pm.", "Alarm at 5am."), ("Alarm at 5pm.", "Alarm at 17:00.")),
    ("date", ("Weather in May 2020", "Weather in June 2020"), ("Is it sunny today?", "Is it sunny?")),
    ("date", ("Call me tomorrow.", "Call me today."), ("Meet next week?", "Meet next week please?")),
    ("date", ("Due 2024-05-01?", "Due 2024-05-02?"), ("May I go?", "Can I go?")),
    (
        "negation",
        ("Cancel my subscription.", "Don't cancel my subscription."),
        ("Don't cancel it.", "Do not cancel it."),
    ),
    (
        "negation",
        ("Cake with sugar", "Cake without sugar"),
        ("Why can't I sleep?", "Why am I not able to sleep?"),
    ),
    ("negation", ("Is it ever safe?", "Is it never safe?"), ("I never win.", "I cannot ever win.")),
    ("negation", ("Why does it work?", "Why doesn’t it work?"), ("Why does it work?", "How does it work?")),
    (
        "negation",
        ("Should X be banned?", "Should X not be banned?"),
        ("Should X be banned?", "Should X be banned or not?"),
    ),
    (
        # A near-miss the soak found among RouterBench's MBPP prompts: an exception carves out a case.
        "negation",
        (
            "Write a function that checks if a string contains 'z', except at the start and end of the word.",
            "Write a function that matches a word containing 'z'.",
        ),
        ("List the files unless the folder is empty.", "Unless the folder is empty, list the files."),
    ),
    ("entity", ("Capital of France?", "Capital of Germany?"), ("Learn Python fast", "learn python fast")),
    (
        "entity",
        ("Flights to Paris", "Flights to Rome"),
        ("Why is India poor?", "Why are Indian people poor?"),
    ),
    (
        "entity",
        ('What does "carpe diem" mean?', 'What does "carpe noctem" mean?'),
        ("Is NASA real?", "is nasa real"),
    ),
    (
        "entity",
        ("Install it on iPhone", "Install it on Android"),
        ("What Is The Best Phone?", "what is the best phone"),
    ),
    ("scope", ("Delete my account.", "Delete all accounts."), ("Delete my account.", "Delete the account.")),
    (
        "scope",
        ("Hack my phone", "Hack his phone"),
        ("How do I improve my English?", "How do you improve your English?"),
    ),
    ("scope", ("Reset my password", "Reset all passwords"), ("All my photos", "My photos")),
    (
        "antonym",
        ("How do I buy bitcoin?", "How do I sell bitcoin?"),
        ("How do I buy bitcoin?", "Where can I buy bitcoin?"),
    ),
    ("antonym", ("Install Python", "Uninstall Python"), ("Install Python", "Set up Python")),
    ("antonym", ("Best phone?", "Worst phone?"), ("Best phone?", "Best phones?")),
    (
        "entity_order",
        ("Does the Berlin train stop before Chicago?", "Does the Chicago train stop before Berlin?"),
        ("Which is better, Java or Python?", "Which is better, Python or Java?"),
    ),
    (
        "entity_order",
        ("How do I fly from Paris to Rome?", "How do I fly from Rome to Paris?"),
        ("How do I fly from Paris to Rome?", "What is the cheapest way to fly from Paris to Rome?"),
    ),
    (
        "entity_order",
        ("Is Messi better than Ronaldo?", "Is Ronaldo better than Messi?"),
        ("Java vs Python: which should I learn?", "Python vs Java: which should I learn?"),
    ),
]


@pytest.mark.parametrize(("rule_name", "near_miss", "harmless"), CASES)
def test_rule_fires_on_near_miss_in_both_directions(
    rule_name: str, near_miss: tuple[str, str], harmless: tuple[str, str]
) -> None:
    rule = RULES_BY_NAME[rule_name]
    a, b = near_miss
    assert rule.differences(signature(a), signature(b)), f"{rule_name} missed {near_miss}"
    assert rule.differences(signature(b), signature(a)), f"{rule_name} missed reversed {near_miss}"


@pytest.mark.parametrize(("rule_name", "near_miss", "harmless"), CASES)
def test_rule_accepts_harmless_rewording(
    rule_name: str, near_miss: tuple[str, str], harmless: tuple[str, str]
) -> None:
    rule = RULES_BY_NAME[rule_name]
    a, b = harmless
    assert rule.differences(signature(a), signature(b)) == []
    assert rule.differences(signature(b), signature(a)) == []


def test_clock_digits_are_not_also_numbers() -> None:
    # 17:00 and 5pm are one time; the number rule must not see 17 and 0 as extra numbers.
    assert signature("Alarm at 17:00").numbers == frozenset()
    assert "time:17:00" in signature("Alarm at 5 p.m.").dates


def test_written_and_scaled_numbers_parse() -> None:
    assert signature("two hundred and fifty people").numbers == {(250.0, "")}
    assert signature("three thousand five hundred km").numbers == {(3500.0, "km")}
    assert (5000.0, "") in signature("5k followers").numbers
    assert (2_000_000.0, "inr") in signature("2 million rupees").numbers
    assert (3.0, "") in signature("the third time").numbers


def test_one_as_pronoun_is_not_a_number() -> None:
    assert signature("How can one learn to code?").numbers == frozenset()
    assert (1.0, "h") in signature("in one hour").numbers


def test_sentence_initial_capital_is_not_an_entity() -> None:
    assert signature("Cancel my order. Then refund it").entities == frozenset()
    assert signature("Why is Donald Trump popular?").entities == {"donald", "trump"}


def test_rule_verifier_reports_the_rule_and_rejects() -> None:
    verifier = RuleVerifier()
    verdict = verifier.verify("cancel my subscription", "don't cancel my subscription", 0.95)
    assert not verdict.accept
    assert verdict.reason.startswith("negation:")
    assert verdict.score == 0.0
    same = verifier.verify("How do I cancel my subscription?", "How can I cancel my subscription?", 0.97)
    assert same.accept and same.score == 1.0


def test_rule_differences_lists_every_rule() -> None:
    found = rule_differences("Fly to Paris on Monday", "Fly to Rome on Friday")
    assert set(found) == {rule.name for rule in RULES}
    assert found["entity"] and found["date"] and not found["negation"]


def test_rules_survive_odd_input() -> None:
    for text in ["", "   ", "?!", "12:99", "99/99/9999", "$", "''", '""', "💥 émoji", "a" * 5000]:
        for rule in RULES:
            rule.differences(signature(text), signature("What is this?"))


@pytest.mark.parametrize(
    ("a", "b", "replaced"),
    [
        ("Book a table for 4 people.", "Book a table for 5 people.", {"number_replaced"}),
        ("What is the capital of France?", "What is the capital of Germany?", {"entity_replaced"}),
        ("Run 5 km today", "Run 5 miles today", {"number_replaced"}),
        # Omissions: one text leaves a detail out; the base rules see them, the replacement rules do not.
        ("Why do people think Trump is racist?", "Do you think Donald Trump is a racist?", set()),
        ("Which are the best movies?", "What are the top 10 movies?", set()),
    ],
)
def test_replacement_rules_fire_only_on_replacements(a: str, b: str, replaced: set[str]) -> None:
    from tierwise.cache.verifier_rules import GUARD_RULES, ReplacedRule

    found = rule_differences(a, b, [rule for rule in GUARD_RULES if isinstance(rule, ReplacedRule)])
    assert {name for name, diffs in found.items() if diffs} == replaced
    base = rule_differences(a, b)
    assert base["number"] or base["entity"]  # the base rules see every one of these pairs


@pytest.mark.parametrize(
    ("a", "b", "difference"),
    [
        ("Which dog foods contain grain?", "Which dog foods lack grain?", "contain vs lack"),
        ("How do I repair a kettle?", "How do I replace a kettle?", "repair vs replace"),
        ("How do I lose weight fast?", "How do I lose weight quickly?", "fast vs quickly"),
        # Not one content word: a function word, an inflection, a typo, a number, more than one word.
        ("What is the way to learn Go?", "Which is the way to learn Go?", None),
        ("How do I learn to drive?", "How do I learn driving?", None),
        ("How often should I feed a gecko?", "How often sohuld I feed a gecko?", None),
        ("Book a table for 4 people.", "Book a table for 5 people.", None),
        ("How do I repair a kettle?", "How can I fix an old kettle?", None),
        ("How do I repair a kettle?", "How do I repair a kettle?", None),
    ],
)
def test_substitution_sees_one_content_word_replaced(a: str, b: str, difference: str | None) -> None:
    found = rule_differences(a, b, [RULES_BY_NAME["substitution"]])["substitution"]
    assert found == ([] if difference is None else [difference])
