"""Generate the self-distillation prompt mix (overfill/data/prompts-mix.jsonl).

The full model answers these prompts (``overfill make-data``) and its own answers train the
decoder. About 40% are short-answer questions with an explicit format instruction ("Answer in
one word.", "Give only the number.", "True or false:", ...) so the decoder learns to stop right
after a short answer; the rest are open-ended (explanations, how-to, lists, writing, rewriting,
summaries, translation, code, advice). Word and topic lists live in runs/prompt_lists.py.

Run (standard library only, deterministic for a given seed, a few seconds):

    python3 runs/make_prompts.py --output overfill/data/prompts-mix.jsonl --seed 0

Each output line is ``{"messages": [{"role": "user", "content": "..."}]}``. The script refuses
to write (exit status 1) if any prompt is a duplicate, is longer than 400 characters, equals a
prompt in overfill/data/prompts.jsonl or overfill/data/eval_tasks.jsonl, or asks the same
question as an eval task once the format instruction is stripped. It prints counts per family.
"""

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prompt_lists as L  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EVAL_PATH = REPO / "overfill" / "data" / "eval_tasks.jsonl"
TRAIN_PATH = REPO / "overfill" / "data" / "prompts.jsonl"
MAX_CHARS = 400

# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------

TOKEN_RE = re.compile(r"[a-z0-9]+|[+\-×*/=%]")
# Words that carry no content when comparing a question with the eval questions.
STOPWORDS = frozenset(
    "what is the a an of in are how many does do which who to you call called on and it its for "
    "that this be there was i my me can with has have at by from or please".split())


def tokens(text):
    """Lower-case word/number/operator tokens; 'x' between numbers and '*' both become '×'."""
    text = re.sub(r"(?<=\d)\s*[x*]\s*(?=\d)", " × ", text.lower())
    return TOKEN_RE.findall(text)


def _instruction_phrases():
    phrases = list(L.EXTRA_STRIP_PHRASES)
    for kinds in L.INSTRUCTIONS.values():
        phrases += kinds["suffix"] + kinds["prefix"]
    toks = [tuple(tokens(p)) for p in phrases]
    # Longest first so that "answer in one word" goes before "one word".
    return sorted({t for t in toks if t}, key=lambda t: (-len(t), t))


STRIP_PHRASES = _instruction_phrases()


OPTIONS_RE = re.compile(r"(?:^|\s)A\)\s")


def stem(text):
    """The question with every known format instruction (and any A)/B)/C) options) removed,
    normalised to tokens."""
    toks = tokens(OPTIONS_RE.split(text, maxsplit=1)[0])
    for phrase in STRIP_PHRASES:
        n = len(phrase)
        i = 0
        while i + n <= len(toks):
            if tuple(toks[i:i + n]) == phrase:
                del toks[i:i + n]
            else:
                i += 1
    return " ".join(toks)


def content(text):
    """Multiset of content tokens of the stem (stopwords removed)."""
    return Counter(t for t in stem(text).split() if t not in STOPWORDS)


def exact_key(text):
    return " ".join(text.lower().split())


def article(word):
    """'a' or 'an' for a word (good enough for the lists in prompt_lists)."""
    w = word.lower()
    if w.startswith(("uni", "uku", "use", "eu", "one")):
        return "a"
    if w.startswith(("hour", "honest")):
        return "an"
    return "an" if w[:1] in "aeiou" else "a"


def with_article(word):
    return f"{article(word)} {word}"


def cap(text):
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Overlap guard against the eval set and the existing prompt set
# ---------------------------------------------------------------------------------------------


def read_prompts(path):
    """First user message of each JSONL line (eval and prompt files share the chat form)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["messages"][0]["content"])
    return out


class Guard:
    """Rejects prompts that equal, or re-ask, a held-out eval question.

    * exact: equal (case/whitespace-insensitive) to an eval prompt or a shipped training prompt;
    * stem: the same question as an eval task once format instructions are stripped;
    * paraphrase: the content words of an eval question, plus at most two extra words, in any
      order (catches "Name the capital city of Poland." or "Is Warsaw the capital of Poland?").
    """

    def __init__(self, eval_prompts, train_prompts):
        self.exact = {exact_key(p): "prompts.jsonl" for p in train_prompts}
        self.exact.update({exact_key(p): "eval_tasks.jsonl" for p in eval_prompts})
        self.eval_stems = {stem(p): p for p in eval_prompts}
        self.eval_content = [(content(p), p) for p in eval_prompts]

    def violation(self, text):
        """None if the text is allowed, else a short reason naming the eval task it copies."""
        key = exact_key(text)
        if key in self.exact:
            return f"equals a prompt in {self.exact[key]}"
        s = stem(text)
        if s in self.eval_stems:
            return f"same question as eval task {self.eval_stems[s]!r}"
        c = content(text)
        size = sum(c.values())
        for ec, p in self.eval_content:
            esize = sum(ec.values())
            if not esize or size - esize > 2 or size < esize:
                continue
            if (esize >= 2 or size == esize) and not (ec - c):
                return f"paraphrases eval task {p!r}"
        return None


# ---------------------------------------------------------------------------------------------
# Format instructions
# ---------------------------------------------------------------------------------------------


def fmt(rng, kind, question, prefix_prob=0.3):
    """Attach a randomly worded format instruction of `kind` before or after the question."""
    variants = L.INSTRUCTIONS[kind]
    if rng.random() < prefix_prob:
        sep = "\n" if "\n" in question and rng.random() < 0.5 else " "
        return f"{rng.choice(variants['prefix'])}{sep}{question}"
    sep = "\n" if "\n" in question else " "
    return f"{question}{sep}{rng.choice(variants['suffix'])}"


def short(rng, kinds, question, prefix_prob=0.3):
    """A short-answer prompt: (prompt, core question). `kinds` is one kind or a list to pick from."""
    kind = kinds if isinstance(kinds, str) else rng.choice(kinds)
    return fmt(rng, kind, question, prefix_prob), question


def options(rng, correct, wrong):
    """Multiple-choice block: shuffled options labelled A), B), ... on one line or several."""
    opts = [correct] + list(wrong)
    rng.shuffle(opts)
    labels = "ABCD"[:len(opts)]
    parts = [f"{lab}) {o}" for lab, o in zip(labels, opts)]
    return ("\n".join(parts) if rng.random() < 0.5 else "  ".join(parts)), opts


# ---------------------------------------------------------------------------------------------
# Short-answer families. Each function returns one random (prompt, core question) pair.
# ---------------------------------------------------------------------------------------------

NUM = "number"


def sa_arithmetic(rng):
    op = rng.choice(["add", "add", "sub", "sub", "mul", "mul", "div", "misc"])
    if op == "add":
        a, b = rng.randint(2, 400), rng.randint(2, 400)
        q = rng.choice([f"What is {a} + {b}?", f"What is {a} plus {b}?", f"Calculate {a} + {b}.",
                        f"What is the sum of {a} and {b}?", f"Add {a} and {b}.",
                        f"What do you get when you add {b} to {a}?", f"What is {b} more than {a}?"])
    elif op == "sub":
        a = rng.randint(10, 500)
        b = rng.randint(1, a)
        q = rng.choice([f"What is {a} - {b}?", f"What is {a} minus {b}?", f"Compute {a} - {b}.",
                        f"Subtract {b} from {a}.", f"What is {b} less than {a}?",
                        f"What is the difference between {a} and {b}?"])
    elif op == "mul":
        a, b = rng.randint(2, 15), rng.randint(2, 12)
        if rng.random() < 0.3:
            a = rng.randint(11, 99)
        q = rng.choice([f"What is {a} x {b}?", f"What is {a} times {b}?", f"What is {a} × {b}?",
                        f"What is {a} multiplied by {b}?", f"What is the product of {a} and {b}?",
                        f"Calculate {a} * {b}."])
    elif op == "div":
        b, c = rng.randint(2, 12), rng.randint(2, 15)
        a = b * c
        q = rng.choice([f"What is {a} divided by {b}?", f"What is {a} / {b}?", f"Divide {a} by {b}.",
                        f"How many times does {b} go into {a}?", f"What is {a} ÷ {b}?"])
    else:
        n = rng.randint(2, 20)
        q = rng.choice([f"What is {n} squared?", f"What is half of {2 * n * rng.randint(1, 9)}?",
                        f"What is double {n * rng.randint(2, 9)}?", f"What is 10% of {n * 10 * rng.randint(1, 5)}?",
                        f"What is {n} + {n} + {n}?", f"What is {n * 3} - {n} + {rng.randint(1, 9)}?",
                        f"What is {rng.randint(2, 9)} + {rng.randint(2, 9)} x {rng.randint(2, 9)}?",
                        f"What is a quarter of {4 * n}?", f"What is {n * 5} divided by 5, plus 3?"])
    return short(rng, NUM, q)


def sa_word_problem(rng):
    n1, n2 = rng.sample(L.NAMES, 2)
    obj, objs = rng.choice(L.OBJECTS)
    con, cons = rng.choice(L.CONTAINERS)
    cur = rng.choice(L.CURRENCIES)
    a, b = rng.randint(3, 30), rng.randint(2, 12)
    t = rng.randrange(14)
    if t == 0:
        q = f"{n1} has {a} {objs} and finds {b} more. How many {objs} does {n1} have now?"
    elif t == 1:
        q = f"{n1} had {a + b} {objs} and gave {b} to {n2}. How many {objs} does {n1} have left?"
    elif t == 2:
        q = f"There are {b} {cons} with {rng.randint(2, 10)} {objs} in each {con}. How many {objs} are there in total?"
    elif t == 3:
        q = f"{n1} shares {a * b} {objs} equally among {b} friends. How many {objs} does each friend get?"
    elif t == 4:
        item, items = rng.choice(L.BUYABLES)
        q = f"One {item} costs {rng.randint(2, 9)} {cur}. How many {cur} do {b} {items} cost?"
    elif t == 5:
        item, _ = rng.choice(L.BUYABLES)
        q = f"{n1} has {a + b} {cur} and spends {b} {cur} on {with_article(item)}. How many {cur} are left?"
    elif t == 6:
        q = f"{n1} reads {b} pages every day. How many pages does {n1} read in {rng.randint(3, 14)} days?"
    elif t == 7:
        q = f"{n1} is {a} years old. {n2} is {b} years older than {n1}. How old is {n2}?"
    elif t == 8:
        place = rng.choice(L.PLACES_SMALL)
        c = rng.randint(1, a)
        q = f"There are {a} {objs} {place}. {b} more are added, then {c} are taken away. How many {objs} are there now?"
    elif t == 9:
        q = f"{n1} walks {b} kilometers every day. How many kilometers does {n1} walk in one week?"
    elif t == 10:
        w, h = rng.randint(2, 20), rng.randint(2, 20)
        q = rng.choice([f"A rectangle is {w} cm long and {h} cm wide. What is its area in square centimeters?",
                        f"A rectangle is {w} cm long and {h} cm wide. What is its perimeter in centimeters?",
                        f"A square has sides of {w} cm. What is its perimeter in centimeters?"])
    elif t == 11:
        q = (f"{n1} scored {a} points in the first game and {rng.randint(2, 30)} points in the second. "
             f"How many points did {n1} score in total?")
    elif t == 12:
        q = f"A class of {a * b} students is split into groups of {b}. How many groups are there?"
    else:
        q = f"{n1} has {a} {objs}. {n2} has {b} times as many. How many {objs} does {n2} have?"
    return short(rng, [NUM, NUM, NUM, "just_answer"], q)


def sa_unit_conversion(rng):
    big, small, f, big_one = rng.choice(L.UNIT_CONVERSIONS)
    n = rng.randint(2, 12)
    q = rng.choice([f"How many {small} are in {n} {big}?", f"Convert {n} {big} to {small}.",
                    f"How many {big} are {n * f} {small}?", f"{n} {big} is how many {small}?",
                    f"How many {small} are there in half {with_article(big_one)}?" if f % 2 == 0 else
                    f"How many {small} are in one {big_one}?"])
    return short(rng, [NUM, NUM, "just_answer"], q)


def sa_time_math(rng):
    h, d = rng.randint(1, 11), rng.randint(2, 8)
    m = rng.choice([0, 15, 30, 45])
    t = rng.randrange(6)
    if t == 0:
        q = f"It is {h} o'clock now. What time will it be in {d} hours?"
    elif t == 1:
        q = (f"A film starts at {h}:{m:02d} pm and lasts {rng.choice([90, 100, 120, 135])} minutes. "
             "What time does it end?")
    elif t == 2:
        q = (f"If you go to bed at {rng.randint(9, 11)} pm and wake up at {rng.randint(5, 8)} am, "
             "how many hours do you sleep?")
    elif t == 3:
        q = f"A bus leaves at {h}:{m:02d} and the trip takes {rng.randint(15, 55)} minutes. When does it arrive?"
    elif t == 4:
        q = f"How many minutes are there from {h}:{m:02d} to {h + 1}:{m:02d}?"
    else:
        q = f"A train trip takes {d} hours and {rng.choice([15, 30, 45])} minutes. How many minutes is that?"
    kind = NUM if "how many" in q.lower() else ["just_answer", "few_words"]
    return short(rng, kind, q)


def sa_calendar(rng):
    day = rng.randrange(7)
    month = rng.randrange(12)
    days, months = L.WEEKDAYS, L.MONTHS
    k = rng.randint(2, 6)
    t = rng.randrange(7)
    if t == 0:
        q = f"If today is {days[day]}, what day will it be tomorrow?"
    elif t == 1:
        q = f"If today is {days[day]}, what day was it yesterday?"
    elif t == 2:
        q = f"If today is {days[day]}, what day will it be in {k} days?"
    elif t == 3:
        q = f"Which month comes {k} months after {months[month]}?"
    elif t == 4:
        q = f"Which month comes right before {months[month]}?"
    elif t == 5:
        q = f"What day of the week comes right after {days[day]}?"
    else:
        mo = months[month]
        q = (f"How many days are in {mo}?" if mo != "February" else
             "How many days does February have in a leap year?")
        return short(rng, NUM, q)
    return short(rng, "one_word", q)


def sa_geography(rng):
    country, capital, continent, language = rng.choice(L.COUNTRIES)
    t = rng.randrange(8)
    if t == 0:
        q = rng.choice([f"What is the capital of {country}?", f"Name the capital city of {country}.",
                        f"Which city is the capital of {country}?"])
    elif t == 1:
        q = rng.choice([f"{capital} is the capital of which country?", f"Which country has {capital} as its capital?"])
    elif t == 2 and continent:
        q = rng.choice([f"On which continent is {country}?", f"Which continent is {country} part of?"])
    elif t == 3 and language:
        q = rng.choice([f"What is the main language spoken in {country}?",
                        f"Which language do most people in {country} speak?"])
    elif t == 4:
        city, _ = rng.choice(L.CITIES)
        q = rng.choice([f"In which country is {city}?", f"{city} is a city in which country?"])
    elif t == 5:
        place, _ = rng.choice(L.LANDMARKS)
        q = f"In which city can you find {place}?"
    else:
        q = rng.choice(L.GEOGRAPHY_QUESTIONS)
        return short(rng, ["one_word", "few_words", "just_answer"], q)
    return short(rng, ["one_word", "one_word", "just_answer"], q)


def sa_knowledge(rng):
    topic = rng.choice(list(L.ONE_WORD_QUESTIONS))
    return short(rng, ["one_word", "one_word", "one_word", "just_answer"], rng.choice(L.ONE_WORD_QUESTIONS[topic]))


def sa_counting_facts(rng):
    return short(rng, NUM, rng.choice(L.NUMBER_QUESTIONS))


def sa_vocabulary(rng):
    t = rng.randrange(5)
    if t == 0:
        w = rng.choice(L.OPPOSITES)[rng.randrange(2)]
        q = rng.choice([f"What is the opposite of {w}?", f"What is the opposite of '{w}'?",
                        f"Give the opposite of the word '{w}'.", f"What word means the opposite of {w}?"])
    elif t == 1:
        w = rng.choice(L.SYNONYMS)
        q = rng.choice([f"Give a synonym for '{w}'.", f"What is another word for {w}?",
                        f"Name a word that means the same as '{w}'."])
    elif t == 2:
        w = rng.choice(L.PLURALS)
        q = rng.choice([f"What is the plural of '{w}'?", f"What is the plural form of {w}?"])
    elif t == 3:
        w = rng.choice(L.PAST_TENSES)
        q = rng.choice([f"What is the past tense of '{w}'?", f"What is the simple past of the verb '{w}'?"])
    else:
        w = rng.choice([x for x in L.SPELLING_WORDS if len(x) <= 4])
        q = rng.choice([f"Give a word that rhymes with '{w}'.", f"Name one word that rhymes with {w}."])
    return short(rng, ["one_word", "one_word", "just_answer"], q)


def sa_spelling(rng):
    w, w2 = rng.sample(L.SPELLING_WORDS, 2)
    letter = rng.choice("abcdefghijklmnopqrstuvwxy")
    t = rng.randrange(8)
    if t == 0:
        return short(rng, "letter", rng.choice([f"What is the first letter of the word '{w}'?",
                                                 f"Which letter does '{w}' start with?"]))
    if t == 1:
        return short(rng, "letter", f"What is the last letter of the word '{w}'?")
    if t == 2:
        return short(rng, NUM, rng.choice([f"How many letters are in the word '{w}'?",
                                           f"How many letters does '{w}' have?"]))
    if t == 3 and "y" not in w:  # 'y' would make the vowel count debatable
        return short(rng, NUM, f"How many vowels are in the word '{w}'?")
    if t == 4:
        return short(rng, "one_word", f"Which word comes first in alphabetical order: '{w}' or '{w2}'?")
    if t == 5:
        return short(rng, "just_answer", f"Spell the word '{w}' backwards.")
    if t == 6:
        after = chr(ord(letter) + 1).upper()
        return short(rng, "letter", rng.choice([f"Which letter comes right after '{letter.upper()}' in the alphabet?",
                                                f"Which letter comes just before '{after}' in the alphabet?"]))
    return short(rng, NUM, f"How many times does the letter '{w[0]}' appear in the word '{w}'?")


def sa_comparison(rng):
    t = rng.randrange(5)
    if t == 0:
        a, b = rng.sample(range(2, 1000), 2)
        if rng.random() < 0.3:
            a, b = round(rng.uniform(0, 10), rng.choice([1, 2])), round(rng.uniform(0, 10), 1)
        if a == b:
            b = a + 1
        q = rng.choice([f"Which is bigger, {a} or {b}?", f"Which number is smaller: {a} or {b}?",
                        f"Which is larger: {a} or {b}?"])
        return short(rng, ["number", "just_answer"], q)
    lists = [(L.SIZE_ORDER, 2, ["bigger", "smaller"]), (L.SPEED_ORDER, 2, ["faster", "slower"]),
             (L.TIME_ORDER, 1, ["longer", "shorter"]), (L.LENGTH_ORDER, 1, ["longer", "shorter"])]
    items, gap, words = lists[t - 1]
    i, j = sorted(rng.sample(range(len(items)), 2))
    while j - i < gap:  # items too close in the list make the answer debatable
        i, j = sorted(rng.sample(range(len(items)), 2))
    x, y = items[i], items[j]
    if rng.random() < 0.5:
        x, y = y, x
    q = f"Which is {rng.choice(words)}, {x} or {y}?"
    return short(rng, ["few_words", "just_answer"], q)


CATEGORY_PHRASE = {  # category -> (members take an article?, "a fruit")
    "fruit": (True, "a fruit"), "vegetable": (True, "a vegetable"), "mammal": (True, "a mammal"),
    "bird": (True, "a bird"), "fish": (True, "a fish"), "insect": (True, "an insect"),
    "color": (False, "a color"), "musical instrument": (True, "a musical instrument"),
    "sport": (False, "a sport"), "vehicle": (True, "a vehicle"), "piece of furniture": (True, "a piece of furniture"),
    "tool": (True, "a tool"), "piece of clothing": (True, "a piece of clothing"), "body part": (True, "a body part"),
    "planet": (False, "a planet"), "metal": (False, "a metal"), "shape": (True, "a shape"), "drink": (False, "a drink"),
}
CONFUSABLE = [["fruit", "vegetable"], ["mammal", "bird", "fish", "insect"], ["musical instrument", "tool"],
              ["vehicle", "piece of furniture"], ["piece of clothing", "body part"], ["color", "shape"],
              ["sport", "drink"], ["planet", "metal"]]


def member(rng, cat):
    """A random unambiguous member of a category, with an article when it takes one."""
    words = [w for w in L.CATEGORIES[cat] if w not in L.AMBIGUOUS_MEMBERS]
    w = rng.choice(words)
    return with_article(w) if CATEGORY_PHRASE[cat][0] else w


def other_category(rng, cat):
    group = next((g for g in CONFUSABLE if cat in g), [])
    pool = [c for c in group if c != cat] if rng.random() < 0.7 and len(group) > 1 else \
        [c for c in L.CATEGORIES if c != cat]
    return rng.choice(pool)


def sa_yes_no(rng):
    t = rng.randrange(6)
    if t <= 1:
        q = rng.choice(L.YES_NO_FACTS)
    elif t == 2:
        cat = rng.choice(list(L.CATEGORIES))
        asked = cat if rng.random() < 0.5 else other_category(rng, cat)
        q = f"Is {member(rng, cat)} {CATEGORY_PHRASE[asked][1]}?"
    elif t == 3:
        n = rng.randint(1, 200)
        q = rng.choice([f"Is {n} an even number?", f"Is {n} an odd number?",
                        f"Is {n} divisible by {rng.randint(2, 9)}?",
                        f"Is {n} a prime number?" if n < 60 else f"Is {n} greater than {rng.randint(1, 300)}?"])
    elif t == 4:
        country, capital, _, _ = rng.choice(L.COUNTRIES)
        other = rng.choice(L.COUNTRIES)[1] if rng.random() < 0.5 else capital
        q = f"Is {other} the capital of {country}?"
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        c = a * b + rng.choice([0, 0, 1, -1, 2])
        q = rng.choice([f"Is {a} x {b} equal to {c}?", f"Is {a} + {b} equal to {a + b + rng.choice([0, 1, -1])}?"])
    return short(rng, "yes_no", q, prefix_prob=0.45)


def sa_true_false(rng):
    t = rng.randrange(5)
    if t <= 1:
        s = rng.choice(L.TRUE_FALSE_STATEMENTS)
    elif t == 2:
        cat = rng.choice(list(L.CATEGORIES))
        asked = cat if rng.random() < 0.5 else other_category(rng, cat)
        s = f"{cap(member(rng, cat))} is {CATEGORY_PHRASE[asked][1]}."
    elif t == 3:
        country, capital, _, _ = rng.choice(L.COUNTRIES)
        other = rng.choice(L.COUNTRIES)[1] if rng.random() < 0.5 else capital
        s = f"{other} is the capital of {country}."
    else:
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        s = rng.choice([f"{a} + {b} = {a + b + rng.choice([0, 0, 1, -2, 10])}.", f"{a} is greater than {b}.",
                        f"{a * 2} is an even number.", f"{a * 2 + 1} is an even number.",
                        f"Half of {a * 2} is {a + rng.choice([0, 0, 1])}."])
    return short(rng, "true_false", s, prefix_prob=0.55)


def sa_multiple_choice(rng):
    t = rng.randrange(6)
    if t == 0:
        cat = rng.choice(list(L.CATEGORIES))
        wrong_cats = rng.sample([c for c in L.CATEGORIES if c != cat], 2)
        q = f"Which of these is {CATEGORY_PHRASE[cat][1]}?"
        block, opts = options(rng, member(rng, cat), [member(rng, c) for c in wrong_cats])
    elif t == 1:
        cat = rng.choice(list(L.CATEGORIES))
        right = []
        while len(right) < 3:
            m = member(rng, cat)
            if m not in right:
                right.append(m)
        q = f"Which of these is not {CATEGORY_PHRASE[cat][1]}?"
        block, opts = options(rng, member(rng, other_category(rng, cat)), right)
    elif t == 2:
        country, capital, _, _ = rng.choice(L.COUNTRIES)
        wrong = rng.sample([c[1] for c in L.COUNTRIES if c[1] != capital], rng.choice([2, 3]))
        q = f"What is the capital of {country}?"
        block, opts = options(rng, capital, wrong)
    elif t == 3:
        a, b = rng.randint(3, 12), rng.randint(3, 12)
        q = f"What is {a} x {b}?"
        block, opts = options(rng, str(a * b), [str(a * b + d) for d in rng.sample([-a, -2, -1, 1, 2, b], 2)])
    elif t == 4:
        w, opp = rng.choice(L.OPPOSITES)
        others = [p[rng.randrange(2)] for p in rng.sample(L.OPPOSITES, 4) if w not in p and opp not in p][:2]
        q = f"What is the opposite of '{w}'?"
        block, opts = options(rng, opp, others)
    else:
        big, small, f, _ = rng.choice(L.UNIT_CONVERSIONS)
        q = f"How many {small} are in 2 {big}?"
        block, opts = options(rng, str(2 * f), [str(f), str(3 * f)] if f > 2 else [str(f + 1), str(2 * f + 2)])
    # Dedupe key: the same question with the same options (in any order) is one prompt.
    return fmt(rng, "letter", f"{q}\n{block}", prefix_prob=0.25), q, q + "|" + "|".join(sorted(opts))


def sa_fill_blank(rng):
    if rng.random() < 0.6:
        s = rng.choice(L.FILL_BLANKS)
    else:
        start, step = rng.randint(1, 30), rng.randint(2, 11)
        seq = ", ".join(str(start + step * i) for i in range(4))
        s = rng.choice([f"{seq}, ____.", f"The number after {start * 7 - 1} is ____.",
                        f"{rng.choice(L.WEEKDAYS)} comes right after ____."])
    lead = rng.choice(["Fill in the blank: ", "Complete the sentence: ", "What word goes in the blank? ",
                       "Fill in the missing word: "])
    return short(rng, ["one_word", "just_answer"], lead + s, prefix_prob=0.2)


def sa_categories(rng):
    cat = rng.choice(list(L.CATEGORIES))
    words = [w for w in L.CATEGORIES[cat] if w not in L.AMBIGUOUS_MEMBERS]
    group = rng.sample(words, rng.choice([3, 4]))
    if rng.random() < 0.55:
        odd = rng.choice([w for w in L.CATEGORIES[other_category(rng, cat)] if w not in L.AMBIGUOUS_MEMBERS])
        items = group[:3] + [odd]
        rng.shuffle(items)
        q = rng.choice([f"Which word does not belong: {', '.join(items)}?",
                        f"Find the odd one out: {', '.join(items)}.",
                        f"Which one is different from the others: {', '.join(items)}?"])
        return short(rng, ["one_word", "one_word", "just_answer"], q)
    q = rng.choice([f"What do these have in common: {', '.join(group)}?",
                    f"Name the category: {', '.join(group)}.",
                    f"{cap(', '.join(group))}: what kind of things are these?"])
    return short(rng, ["one_word", "few_words"], q)


def sa_number_sense(rng):
    n = rng.randint(11, 999)
    t = rng.randrange(7)
    if t == 0:
        start, step = rng.randint(1, 20), rng.randint(2, 12)
        seq = ", ".join(str(start + step * i) for i in range(rng.choice([4, 5])))
        q = rng.choice([f"What number comes next: {seq}?", f"Continue the pattern: {seq}, ..."])
    elif t == 1:
        start = rng.randint(1, 5)
        q = f"What comes next in the sequence {', '.join(str(start * 2 ** i) for i in range(4))}?"
    elif t == 2:
        q = rng.choice([f"Round {n} to the nearest ten.", f"Round {n * 7} to the nearest hundred."])
    elif t == 3:
        nums = rng.sample(range(1, 200), rng.choice([3, 4, 5]))
        q = rng.choice([f"What is the smallest number in this list: {', '.join(map(str, nums))}?",
                        f"What is the largest number here: {', '.join(map(str, nums))}?"])
    elif t == 4:
        q = f"What is the sum of the digits of {n}?"
    elif t == 5:
        q = rng.choice([f"What number comes right after {n}?", f"What number comes just before {n}?"])
    else:
        return short(rng, "one_word", f"Is {n} odd or even?")
    return short(rng, NUM, q)


# ---------------------------------------------------------------------------------------------
# Open-ended families. Each function returns one random prompt; core is the prompt itself.
# ---------------------------------------------------------------------------------------------


def oe_explain(rng):
    c = rng.choice(L.CONCEPTS)
    be = "are" if c in L.PLURAL_CONCEPTS else "is"
    return rng.choice([
        f"Explain {c} in two sentences.", f"What {be} {c}? Explain it simply.", f"Explain {c} to a ten-year-old.",
        f"Give a short explanation of {c}.", f"Can you explain {c} in plain English?",
        f"Describe {c} in one short paragraph.", f"What should a beginner know about {c}?",
        f"Explain {c} using an everyday example.",
        f"In three sentences, what {be} {c} and why {'do they' if be == 'are' else 'does it'} matter?",
        f"I never understood {c}. Can you explain it?", f"Give me a simple analogy for {c}.",
    ])


def oe_how_it_works(rng):
    d = rng.choice(L.DEVICES)
    return rng.choice([f"How does {d} work?", f"Explain how {d} works in simple terms.",
                       f"How does {d} work? Keep it short.", f"What are the main parts of {d}, and what does each do?",
                       f"Describe, step by step, what happens inside {d} when you use it."])


def oe_why(rng):
    q = rng.choice(L.WHY_QUESTIONS)
    return q + rng.choice(["", "", " Explain briefly.", " Keep the answer simple.", " Explain it like I'm five.",
                           " Give a short scientific explanation.", " Answer in a short paragraph."])


def oe_compare(rng):
    a, b = rng.choice(L.COMPARE_PAIRS)
    if rng.random() < 0.5:
        a, b = b, a
    return rng.choice([f"What is the difference between {a} and {b}?", f"Compare {a} and {b} in a short paragraph.",
                       f"How is {a} different from {b}?",
                       f"What do {a} and {b} have in common, and how do they differ?",
                       f"Give two similarities and two differences between {a} and {b}."])


def oe_how_to(rng):
    a = rng.choice(L.ACTIVITIES)
    return rng.choice([f"How do I {a}? Give step-by-step instructions.", f"What are the steps to {a}?",
                       f"Explain how to {a}.", f"I want to {a}. Where should I start?",
                       f"What is the easiest way to {a}?", f"Write a short beginner's guide on how to {a}.",
                       f"What mistakes do people make when they try to {a}?"])


def oe_tips_lists(rng):
    if rng.random() < 0.5:
        a = rng.choice(L.ACTIVITIES)
        n = rng.choice(["three", "four", "five"])
        return rng.choice([f"Give {n} tips to {a}.", f"List {n} tips for people who want to {a}.",
                           f"What are {n} good ways to {a}?", f"Share {n} practical tips to help me {a}."])
    topic = rng.choice(L.LIST_TOPICS)
    n = rng.choice(["three", "five", "six", "seven", "ten"])
    return rng.choice([f"List {n} {topic}.", f"Give me {n} {topic}.", f"Can you name {n} {topic}?",
                       f"Make a bulleted list of {n} {topic}.", f"Name {n} {topic}, with one sentence about each."])


def oe_poem(rng):
    t = rng.choice(L.POEM_TOPICS)
    return rng.choice([f"Write a haiku about {t}.", f"Write a short poem about {t}.",
                       f"Write a four-line rhyming poem about {t}.",
                       f"Write a limerick about {t}.", f"Write a free-verse poem about {t} in under eight lines.",
                       f"Compose two rhyming couplets about {t}.", f"Write a cheerful poem for children about {t}."])


def oe_story(rng):
    s = rng.choice(L.STORY_PROMPTS)
    return rng.choice([f"Write a short story about {s}.", f"Tell a bedtime story about {s}.",
                       f"Write a 100-word story about {s}.", f"Write the opening paragraph of a story about {s}.",
                       f"Write a funny short story about {s}.", f"Write a story about {s} that ends with a surprise."])


def oe_email(rng):
    s = rng.choice(L.EMAIL_SCENARIOS)
    return rng.choice([f"Write a short email {s}.", f"Draft a polite email {s}.", f"Write a friendly message {s}.",
                       f"Help me write a brief, professional email {s}.", f"Write a two-paragraph email {s}."])


def oe_marketing(rng):
    b = rng.choice(L.BUSINESSES)
    return rng.choice([f"Write a catchy slogan for {b}.", f"Suggest five names for {b}.",
                       f"Write a short social media post announcing {b}.",
                       f"Write a two-sentence description of {b} for a website.",
                       f"Give me three slogan ideas for {b}.", f"Write a short radio advert for {b}."])


def oe_grammar(rng):
    s = rng.choice(L.GRAMMAR_ERRORS)
    return rng.choice([f'Fix the grammar in this sentence: "{s}"', f'Correct this sentence: "{s}"',
                       f'What is wrong with this sentence, and how do I fix it? "{s}"',
                       f'Rewrite this sentence with correct grammar: "{s}"', f'Proofread: "{s}"'])


def oe_rewrite(rng):
    s = rng.choice(L.PLAIN_SENTENCES)
    style = rng.choice(["more formal", "more casual", "simpler", "shorter", "more polite", "more exciting",
                        "suitable for a young child", "in the passive voice", "as a question", "more positive"])
    ask = f"Rewrite this sentence {style}" if style.startswith(("in ", "as ", "suitable")) else \
        f"Rewrite this sentence to make it {style}"
    return rng.choice([f'{ask}: "{s}"',
                       f'Paraphrase this sentence: "{s}"', f'Give two other ways to say: "{s}"'])


def oe_summarize(rng):
    p = rng.choice(L.PASSAGES)
    ask = rng.choice(["Summarize this passage in one sentence.", "What is the main idea of this text?",
                      "Give this passage a short title.", "List the key points of this passage.",
                      "Summarize the following for a child.", "Write a one-line summary of this text.",
                      "What are two facts mentioned in this passage?"])
    return f"{ask}\n\n{p}" if rng.random() < 0.6 else f"{p}\n\n{ask}"


def oe_translate(rng):
    s, lang = rng.choice(L.TRANSLATION_SENTENCES), rng.choice(L.LANGUAGES)
    inline = s[:-1] if s.endswith(".") else s  # no full stop inside a quote that ends mid-sentence
    return rng.choice([f'Translate into {lang}: "{s}"', f'How do you say "{inline}" in {lang}?',
                       f'Translate "{inline}" into {lang}.', f'What is "{inline}" in {lang}?'])


def oe_code(rng):
    t = rng.randrange(4)
    if t == 0:
        return rng.choice(L.PYTHON_QUESTIONS)
    if t == 1:
        x = rng.choice(L.SHELL_TASKS)
        return rng.choice([f"How do I {x} on the Linux command line?", f"Which shell command can I use to {x}?",
                           f"Give me a bash command to {x}."])
    task = rng.choice(L.PYTHON_TASKS)
    return rng.choice([f"Write a Python function that {task}.", f"Show me a short Python function that {task}.",
                       f"Write a Python function that {task}, and explain how it works.",
                       f"How would you write Python code that {task}?"])


def oe_advice(rng):
    s = rng.choice(L.ADVICE_SITUATIONS)
    return rng.choice([f"{cap(s)}. What should I do?", f"{cap(s)}. Any advice?", f"{cap(s)}. How can I handle this?",
                       f"My situation: {s}. Give me three practical suggestions.",
                       f"{cap(s)}. What would you recommend?"])


def oe_definition(rng):
    w = rng.choice(L.DEFINITION_WORDS)
    return rng.choice([f"What does the word '{w}' mean?", f"Define '{w}' and use it in a sentence.",
                       f"What is the meaning of '{w}'? Give an example.", f"Explain the word '{w}' in simple terms.",
                       f"Use the word '{w}' in two different sentences."])


def oe_profession(rng):
    p = rng.choice(L.PROFESSIONS)
    return rng.choice([f"What does {with_article(p)} do?", f"Describe a typical day for {with_article(p)}.",
                       f"What skills does {with_article(p)} need?", f"How do I become {with_article(p)}?",
                       f"What are the best and hardest parts of being {with_article(p)}?",
                       f"Write a short job advert for {with_article(p)}."])


def oe_place(rng):
    p = rng.choice(L.PLACES)
    return rng.choice([f"What is {p} known for?", f"Plan a one-day visit to {p}.", f"Describe {p} in three sentences.",
                       f"What is the best time of year to visit {p}, and why?",
                       f"Tell me a few interesting facts about {p}.",
                       f"Write a short postcard message from {p}."])


def oe_animal(rng):
    cat = rng.choice(["mammal", "mammal", "bird", "bird", "fish", "insect"])
    a = rng.choice([w for w in L.CATEGORIES[cat] if w not in L.AMBIGUOUS_MEMBERS])
    return rng.choice([f"Tell me three interesting facts about the {a}.",
                       f"Where does the {a} live, and what does it eat?",
                       f"Write a short paragraph about the {a} for a children's book.",
                       f"How does the {a} survive in the wild?",
                       f"Describe the {a} to someone who has never seen one.",
                       f"Write a riddle whose answer is '{a}'."])


def oe_food(rng):
    d = rng.choice(L.DISHES)
    if rng.random() < 0.25:
        v1, v2 = rng.sample(L.CATEGORIES["vegetable"], 2)
        staple = rng.choice(["rice", "pasta", "eggs", "beans"])
        return f"Suggest a simple dinner I can make with {v1}, {v2} and {staple}."
    return rng.choice([f"How is {d} made?", f"Give me a simple recipe for {d}.", f"Where does {d} come from?",
                       f"What goes well with {d}?", f"Describe the taste of {d} to someone who has never tried it.",
                       f"How can I make {d} a bit healthier?"])


# ---------------------------------------------------------------------------------------------
# Families and targets (short-answer about 40%, open-ended about 60% of ~4100 prompts)
# ---------------------------------------------------------------------------------------------

SHORT_FAMILIES = [
    ("arithmetic", sa_arithmetic, 170), ("word_problem", sa_word_problem, 150),
    ("unit_conversion", sa_unit_conversion, 70), ("time_math", sa_time_math, 50),
    ("calendar", sa_calendar, 45), ("geography", sa_geography, 140), ("knowledge", sa_knowledge, 170),
    ("counting_facts", sa_counting_facts, 52), ("vocabulary", sa_vocabulary, 140), ("spelling", sa_spelling, 110),
    ("comparison", sa_comparison, 90), ("yes_no", sa_yes_no, 110), ("true_false", sa_true_false, 100),
    ("multiple_choice", sa_multiple_choice, 100), ("fill_blank", sa_fill_blank, 50),
    ("categories", sa_categories, 60), ("number_sense", sa_number_sense, 70),
]
OPEN_FAMILIES = [
    ("explain", oe_explain, 280), ("how_it_works", oe_how_it_works, 130), ("why", oe_why, 90),
    ("compare", oe_compare, 100), ("how_to", oe_how_to, 170), ("tips_lists", oe_tips_lists, 180),
    ("poem", oe_poem, 120), ("story", oe_story, 90), ("email", oe_email, 60), ("marketing", oe_marketing, 80),
    ("grammar_fix", oe_grammar, 90), ("rewrite", oe_rewrite, 100), ("summarize", oe_summarize, 80),
    ("translate", oe_translate, 120), ("code", oe_code, 120), ("advice", oe_advice, 90),
    ("definition", oe_definition, 100), ("profession", oe_profession, 90), ("place", oe_place, 80),
    ("animal", oe_animal, 90), ("food", oe_food, 80),
]


def collect(seed, name, fn, target, guard, seen, blocked):
    """Draw from one family until `target` new prompts are accepted (or too many draws fail)."""
    rng = random.Random(f"{seed}:{name}")  # per-family stream: editing one family leaves the others alone
    out = []
    for _ in range(target * 100):
        if len(out) >= target:
            break
        res = fn(rng)  # a prompt, (prompt, core question) or (prompt, core, dedupe key)
        res = res if isinstance(res, tuple) else (res,)
        prompt, core = res[0], res[min(1, len(res) - 1)]
        key = res[2] if len(res) > 2 else stem(core)
        if key in seen or len(prompt) > MAX_CHARS:
            continue
        if guard.violation(prompt) or (core != prompt and guard.violation(core)):
            blocked[name] += 1
            continue
        seen.add(key)
        out.append((name, prompt, core))
    return out


def verify(records, guard):
    """Independent final check of everything the brief promises; exits non-zero on any failure."""
    errors, seen = [], {}
    for name, prompt, core in records:
        key = exact_key(prompt)
        if key in seen:
            errors.append(f"duplicate prompt ({name} and {seen[key]}): {prompt!r}")
        seen[key] = name
        if not prompt.strip() or len(prompt) > MAX_CHARS:
            errors.append(f"bad length {len(prompt)} ({name}): {prompt[:80]!r}")
        for text in dict.fromkeys([prompt, core]):
            reason = guard.violation(text)
            if reason:
                errors.append(f"{name}: {prompt!r} {reason}")
    if errors:
        sys.stderr.write("OVERLAP/DUPLICATE CHECK FAILED:\n" + "\n".join(errors[:50]) + "\n")
        sys.exit(1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, help="JSONL file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", default=str(EVAL_PATH), help="held-out eval tasks (JSONL)")
    ap.add_argument("--prompts", default=str(TRAIN_PATH), help="existing prompt set to stay apart from (JSONL)")
    args = ap.parse_args(argv)

    guard = Guard(read_prompts(args.eval), read_prompts(args.prompts))
    seen, blocked, records = set(), Counter(), []
    for group in (SHORT_FAMILIES, OPEN_FAMILIES):
        for name, fn, target in group:
            records += collect(args.seed, name, fn, target, guard, seen, blocked)
    random.Random(f"{args.seed}:shuffle").shuffle(records)
    verify(records, guard)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for _, prompt, _ in records:
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt}]}, ensure_ascii=False) + "\n")
    written = read_prompts(out)
    assert written == [p for _, p, _ in records], "output does not round-trip"
    verify([(n, p, p) for (n, _, _), p in zip(records, written)], guard)

    counts = Counter(name for name, _, _ in records)
    for title, group in (("short-answer", SHORT_FAMILIES), ("open-ended", OPEN_FAMILIES)):
        total = sum(counts[n] for n, _, _ in group)
        print(f"{title}: {total} ({100 * total / len(records):.1f}%)")
        for name, _, target in group:
            note = f"  (target {target})" if counts[name] < target else ""
            print(f"  {name:16s} {counts[name]:5d}  blocked by eval guard: {blocked[name]}{note}")
    print(f"total {len(records)} prompts -> {out}; overlap and duplicate checks passed")


if __name__ == "__main__":
    main()
