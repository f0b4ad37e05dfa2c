"""
Synthetic grade-school math word problems with worked solutions, in GSM8K's form.

    question: "Mia buys 4 packs of pens at 12 dollars each ..."
    answer:   "4 * 12: 2 * 4 = 8, 1 * 4 = 4"       (working, where a pupil needs it)
              "The pens cost 4 * 12 = 48 dollars.\n...\n#### 60"

Every solution restates the quantities and computes each step as `a op b = c`, then ends
with `#### <number>`, so accuracy is an exact match on that last line. The generator is
made for a small model trained on a laptop CPU, with a difficulty floor so the task is not
trivial: 24 templates in 6 families, 2 to 4 arithmetic steps, + - * and exact /, inputs of
at most 2 digits, intermediate results of at most 3 digits.

Two things make the answers teachable to a 1M-parameter model and worth distilling:

- **They branch, like real worked solutions.** Every kind of solution sentence has several
  wordings (`WORDINGS`), steps that do not depend on each other come in either order, and
  the operands of + and * in either order, all drawn at random per problem. The question
  fixes the answer, not the text: after "The pens cost" and "Mia pays" different words
  follow, which is exactly where predicting several tokens independently goes wrong
  (the paper's zookeeper who feeds the panda meat) and where the critic loss earns its keep.
- **Multi-digit steps show their working, the way a pupil writes it** (`working`): a line of
  column arithmetic, units first, before the sentence that uses the result. Written most
  significant digit first, `345 + 278 = 623` asks the model to resolve every carry before
  its first digit; column by column each token is one small, local step. One-digit facts
  (7 * 8) are done in the head, as a pupil would.

Deterministic: the same `random.Random(seed)` gives the same problems.
`data/check.py` reads an answer back against these wordings (well-formed, steps right).
"""
import itertools
import math
import random
import re

NAMES = ["Mia", "Leo", "Ava", "Noah", "Emma", "Liam", "Zoe", "Omar", "Ivy", "Sam", "Nora",
         "Ben", "Lucy", "Ravi", "Anna", "Tom", "Maya", "Jack", "Ella", "Kai"]
GOODS = [("pen", "pens"), ("book", "books"), ("apple", "apples"), ("cup", "cups"),
         ("ball", "balls"), ("hat", "hats"), ("toy", "toys"), ("card", "cards")]
SWEETS = ["candies", "cookies", "stickers", "marbles", "grapes", "shells"]

MAX_INPUT = 99      # inputs have at most 2 digits
MAX_RESULT = 999    # every intermediate result has at most 3 digits

# Every kind of solution sentence and its wordings. Slots: {e} the worked step "a op b = c";
# {P} {Q} names; {items} {sweets} nouns from the question; {n} a number from the question.
WORDINGS = {
    # shopping
    "cost_of": ["The {items} cost {e} dollars.", "{P} pays {e} dollars for the {items}.",
                "For the {items}, {P} pays {e} dollars."],
    "spends_total": ["In total {P} spends {e} dollars.", "{P} spends {e} dollars in all.",
                     "Altogether that is {e} dollars."],
    "money_left": ["{P} has {e} dollars left.", "{P} is left with {e} dollars.",
                   "That leaves {P} with {e} dollars."],
    "keeps": ["{P} keeps {e} {items}.", "{P} still has {e} {items}.", "After the return, {P} has {e} {items}."],
    "kept_cost": ["They cost {e} dollars.", "The kept {items} cost {e} dollars.",
                  "{P} spends {e} dollars on them."],
    "buys_count": ["{P} buys {e} {items}.", "{P} can buy {e} {items}.", "That buys {e} {items}."],
    "after_giving": ["After giving some away, {P} has {e} {items}.", "{P} now has {e} {items}.",
                     "{P} is left with {e} {items}."],
    # sharing
    "sweets_total": ["There are {e} {sweets}.", "{P} has {e} {sweets} in all.", "The bags hold {e} {sweets}."],
    "per_friend": ["Each friend gets {e} {sweets}.", "Every friend gets {e} {sweets}.",
                   "That is {e} {sweets} for each friend."],
    "sweets_left": ["{P} has {e} {sweets} left.", "{P} keeps {e} {sweets}.", "That leaves {e} {sweets}."],
    "per_jar": ["Each jar gets {e} {sweets}.", "There are {e} {sweets} in each jar.", "Every jar holds {e} {sweets}."],
    "slices": ["There are {e} slices.", "The pizzas have {e} slices.", "That makes {e} slices in all."],
    "eaten": ["The people eat {e} slices.", "They eat {e} slices.", "A total of {e} slices are eaten."],
    "slices_left": ["There are {e} slices left.", "That leaves {e} slices.", "So {e} slices remain."],
    "students": ["There are {e} students.", "The class has {e} students.", "Together there are {e} students."],
    "teams": ["There are {e} teams.", "The teacher makes {e} teams.", "That makes {e} teams."],
    # rates
    "first_part": ["The first part of the trip is {e} miles.", "In the first part {P} drives {e} miles.",
                   "{P} covers {e} miles in the first part."],
    "second_part": ["The second part of the trip is {e} miles.", "In the second part {P} drives {e} miles.",
                    "{P} covers {e} miles in the second part."],
    "trip": ["{P} drives {e} miles in total.", "In all {P} drives {e} miles.", "The whole trip is {e} miles."],
    "per_day": ["Each day {P} makes {e} {items}.", "{P} makes {e} {items} a day.", "In one day {P} makes {e} {items}."],
    "in_days": ["In {n} days {P} makes {e} {items}.", "{P} makes {e} {items} in {n} days.",
                "Over {n} days that is {e} {items}."],
    "room": ["The tank needs {e} more liters.", "There is room for {e} more liters.",
             "It takes {e} more liters to fill the tank."],
    "minutes": ["It takes {e} minutes.", "The tank is full after {e} minutes.", "That is {e} minutes."],
    "pages_read": ["{P} reads {e} pages.", "In all {P} reads {e} pages.", "{P} has read {e} pages."],
    "pages_left": ["There are {e} pages left.", "{P} still has {e} pages to read.", "That leaves {e} pages."],
    # ages
    "age": ["{P} is {e} years old.", "{P} is {e} years of age.", "The age of {P} is {e} years."],
    "ages_of_two": ["{P} and {Q} together are {e} years old.", "Together {P} and {Q} are {e} years old.",
                    "The ages of {P} and {Q} add up to {e} years."],
    "ages_of_three": ["All three together are {e} years old.", "Together all three are {e} years old.",
                      "The sum of their ages is {e} years."],
    "age_later": ["In {n} years {P} will be {e} years old.", "{P} will be {e} years old in {n} years.",
                  "After {n} years {P} will be {e}."],
    "mother": ["The mother is {e} years old.", "{P}'s mother is {e} years old.", "The age of the mother is {e} years."],
    "grandmother": ["The grandmother is {e} years old.", "{P}'s grandmother is {e} years old.",
                    "The age of the grandmother is {e} years."],
    "older_by": ["The grandmother is {e} years older than {P}.", "She is {e} years older than {P}.",
                 "The difference is {e} years."],
    # comparisons
    "has": ["{P} has {e} {sweets}.", "That gives {P} {e} {sweets}.", "So {P} has {e} {sweets}."],
    "two_have": ["{P} and {Q} have {e} {sweets}.", "Together {P} and {Q} have {e} {sweets}.",
                 "{P} and {Q} have {e} {sweets} between them."],
    "three_have": ["Together they have {e} {sweets}.", "They have {e} {sweets} in all.",
                   "All three have {e} {sweets} together."],
    "more_than": ["{P} has {e} more {sweets} than {Q}.", "{P} has {e} {sweets} more than {Q}.",
                  "The difference is {e} {sweets}."],
    "big_tree": ["The big tree was {e} feet tall.", "At first the big tree is {e} feet tall.",
                 "Before the cut the big tree is {e} feet tall."],
    "after_cut": ["After the cut it is {e} feet tall.", "Now the big tree is {e} feet tall.",
                  "The cut leaves it {e} feet tall."],
    "taller": ["It is {e} feet taller than the small tree.", "The big tree is now {e} feet taller.",
               "The difference is {e} feet."],
    "scores": ["{P} scores {e} points.", "{P} gets {e} points.", "The score of {P} is {e} points."],
    "two_score": ["{P} and {Q} score {e} points.", "Together {P} and {Q} score {e} points.",
                  "{P} and {Q} get {e} points between them."],
    "three_score": ["In total they score {e} points.", "They score {e} points in all.",
                    "All three score {e} points together."],
    # measures and money over time
    "flour": ["{P} needs {e} cups of flour.", "The cakes need {e} cups of flour.", "For the cakes {P} needs {e} cups."],
    "more_flour": ["{P} needs {e} more cups.", "{P} must get {e} more cups.", "That is {e} more cups of flour."],
    "plants": ["There are {e} plants.", "The garden has {e} plants.", "The rows hold {e} plants."],
    "after_dying": ["After {n} die there are {e} plants.", "Once {n} die, {e} plants are left.",
                    "Without the dead ones there are {e} plants."],
    "after_gift": ["After giving some away there are {e} plants.", "In the end {e} plants are left.",
                   "That leaves {e} plants."],
    "saves": ["{P} saves {e} dollars.", "In all {P} saves {e} dollars.", "The savings come to {e} dollars."],
    "boxes": ["{P} fills {e} boxes.", "There are {e} boxes.", "That makes {e} boxes."],
    "box_sales": ["The boxes sell for {e} dollars.", "{P} gets {e} dollars.", "All the boxes bring {e} dollars."],
}


class Retry(Exception):
    """The numbers drawn break a rule (a result too large or negative); draw again."""


def apply(a, op, b):
    """The exact result of `a op b`, or Retry if it breaks the generator's rules."""
    if op == "/" and (b == 0 or a % b):
        raise Retry
    c = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
    if not 0 <= c <= MAX_RESULT:
        raise Retry
    return c


class Step:
    """One worked step of a solution: `a op b = value`, stated by one sentence of `kind`.
    Operands may be earlier Steps (the step then depends on them) or numbers."""

    def __init__(self, a, op, b, kind, **slots):
        self.a, self.op, self.b, self.kind, self.slots = a, op, b, kind, slots
        self.value = apply(int(a), op, int(b))

    def __int__(self):
        return self.value

    def depends_on(self):
        return [x for x in (self.a, self.b) if isinstance(x, Step)]


def n(rng, lo=2, hi=MAX_INPUT):
    return rng.randint(lo, hi)


# ---------------------------------------------------------------------------------------
# Pupil's working: column arithmetic, units first, for every step that is not a one-digit
# fact. The rule must be visible from the operands: a rule like "only where a column
# carries" makes the model decide, before its first token, whether a carry will happen,
# which is the very lookahead the working is there to avoid.

def digits(x):
    """Units first: 345 -> [5, 4, 3]."""
    return [int(d) for d in reversed(str(x))]


def add_columns(a, b):
    """345 + 278 -> ["5 + 8 = 13", "4 + 7 + 1 = 12", "3 + 2 + 1 = 6"]. Columns past the shorter
    number with nothing to carry are brought down unchanged and not written."""
    da, db, cols, carry = digits(a), digits(b), [], 0
    for i in range(max(len(da), len(db))):
        terms = [d[i] for d in (da, db) if i < len(d)] + ([1] if carry else [])
        if len(terms) == 1:
            break  # a lone digit: brought down
        total = sum(terms)
        cols.append(" + ".join(map(str, terms)) + f" = {total}")
        carry = total // 10
    return cols


def sub_columns(a, b):
    """345 - 278 -> ["15 - 8 = 7", "14 - 7 - 1 = 6", "3 - 2 - 1 = 0"]: a column that would go
    below zero borrows ten from the next, which pays it back as "- 1"."""
    da, db, cols, borrow = digits(a), digits(b), [], 0
    for i in range(len(da)):
        if i >= len(db) and not borrow:
            break  # brought down
        top, rest = da[i], ([db[i]] if i < len(db) else []) + ([1] if borrow else [])
        borrow = top - sum(rest) < 0
        top += 10 * borrow
        cols.append(" - ".join(map(str, [top] + rest)) + f" = {top - sum(rest)}")
    return cols


def mul_columns(a, b):
    """34 * 7 -> ["4 * 7 = 28", "3 * 7 + 2 = 23"]: the longer number column by column (the
    first when both have two digits), times the other, carrying the tens."""
    x, y = (a, b) if len(str(a)) >= len(str(b)) else (b, a)
    cols, carry = [], 0
    for d in digits(x):
        value = d * y + carry
        cols.append(f"{d} * {y}" + (f" + {carry}" if carry else "") + f" = {value}")
        carry = value // 10
    return cols


def div_columns(a, b):
    """84 / 7 -> ["8 / 7 = 1 remainder 1", "14 / 7 = 2"]: short division, left to right."""
    cols, rem = [], 0
    for i, d in enumerate(str(a)):
        part = rem * 10 + int(d)
        if part < b and not cols and i < len(str(a)) - 1:
            rem = part
            continue  # too small to divide yet: take the next digit too
        q, rem = divmod(part, b)
        cols.append(f"{part} / {b} = {q}" + (f" remainder {rem}" if rem else ""))
    return cols


COLUMNS = {"+": add_columns, "-": sub_columns, "*": mul_columns, "/": div_columns}


def working(a, op, b):
    """The pupil's working line for `a op b`, or None for a one-digit fact (7 * 8, 9 - 4) and
    for a division that short division does not break up: a one-digit quotient (56 / 8, a
    times-table fact) or a two-digit divisor (96 / 12)."""
    if op == "/" and (b >= 10 or a < 10 * b):
        return None
    if max(a, b) < 10:
        return None
    return f"{a} {op} {b}: " + ", ".join(COLUMNS[op](a, b))


# ---------------------------------------------------------------------------------------
# Writing a solution: a valid order of the steps, an order for the operands of + and *, a
# wording per sentence, each drawn at random; then the working where it is needed.

def valid_orders(steps):
    """Every order of `steps` in which each step comes after the steps it uses."""
    return [order for order in itertools.permutations(steps)
            if all(order.index(d) < order.index(s) for s in order for d in s.depends_on())]


def worked(step, rng):
    """A step as written: its working lines (none or one) and "a op b = c", with the operands
    of + and * in either order, drawn at random."""
    a, b = int(step.a), int(step.b)
    if step.op in "+*" and rng.random() < 0.5:
        a, b = b, a
    line = working(a, step.op, b)
    return [line] if line else [], f"{a} {step.op} {b} = {step.value}"


def write_solution(steps, rng):
    """The answer text for a list of Steps (the last one's value is the answer)."""
    lines = []
    for step in rng.choice(valid_orders(steps)):
        working_lines, e = worked(step, rng)
        lines += working_lines + [rng.choice(WORDINGS[step.kind]).format(e=e, **step.slots)]
    return "\n".join(lines) + f"\n#### {steps[-1].value}"


def solution_count(steps):
    """How many distinct solution texts `write_solution` can write for these steps (it draws
    each uniformly, so log2 of this is the entropy of a solution in bits)."""
    swaps = math.prod(2 for s in steps if s.op in "+*" and int(s.a) != int(s.b))
    return len(valid_orders(steps)) * swaps * math.prod(len(WORDINGS[s.kind]) for s in steps)


# ---------------------------------------------------------------------------------------
# Each template draws its numbers, writes the question, and returns (question, steps); the
# last step's value is the answer. Division is made exact by drawing the quotient first.

# --- family 1: shopping ---

def shop_two_items(rng):
    a = rng.choice(NAMES)
    (_, g1s), (_, g2s) = rng.sample(GOODS, 2)
    n1, p1, n2, p2 = n(rng, 2, 9), n(rng, 2, 40), n(rng, 2, 9), n(rng, 2, 40)
    c1 = Step(n1, "*", p1, "cost_of", items=g1s, P=a)
    c2 = Step(n2, "*", p2, "cost_of", items=g2s, P=a)
    q = (f"{a} buys {n1} {g1s} at {p1} dollars each and {n2} {g2s} at {p2} dollars each. "
         f"How many dollars does {a} spend?")
    return q, [c1, c2, Step(c1, "+", c2, "spends_total", P=a)]


def shop_change(rng):
    a = rng.choice(NAMES)
    _, gs = rng.choice(GOODS)
    k, p, m = n(rng, 2, 9), n(rng, 2, 30), n(rng, 20, 99)
    c = Step(k, "*", p, "cost_of", items=gs, P=a)
    q = f"{a} has {m} dollars and buys {k} {gs} that cost {p} dollars each. How many dollars does {a} have left?"
    return q, [c, Step(m, "-", c, "money_left", P=a)]


def shop_returns(rng):
    a = rng.choice(NAMES)
    _, gs = rng.choice(GOODS)
    k, r, p = n(rng, 5, 30), n(rng, 1, 4), n(rng, 2, 30)
    kept = Step(k, "-", r, "keeps", P=a, items=gs)
    q = (f"{a} buys {k} {gs} at {p} dollars each, then returns {r} of them for a refund. "
         f"How many dollars does {a} spend on the {gs} that are kept?")
    return q, [kept, Step(kept, "*", p, "kept_cost", P=a, items=gs)]


def shop_budget(rng):
    a, b = rng.sample(NAMES, 2)
    _, gs = rng.choice(GOODS)
    p, count, give = n(rng, 2, 20), n(rng, 3, 40), n(rng, 1, 9)
    m = apply(count, "*", p)
    if m > MAX_INPUT:
        raise Retry
    bought = Step(m, "/", p, "buys_count", P=a, items=gs)
    q = (f"{a} has {m} dollars and spends all of it on {gs} that cost {p} dollars each. "
         f"{a} then gives {give} {gs} to {b}. How many {gs} does {a} have now?")
    return q, [bought, Step(bought, "-", give, "after_giving", P=a, items=gs)]


# --- family 2: sharing ---

def share_bags(rng):
    a = rng.choice(NAMES)
    s = rng.choice(SWEETS)
    kids, each, bags = n(rng, 2, 9), n(rng, 2, 40), n(rng, 2, 9)
    total = kids * each
    if total % bags:
        raise Retry
    per_bag = apply(total, "/", bags)
    t = Step(bags, "*", per_bag, "sweets_total", P=a, sweets=s)
    q = (f"{a} has {bags} bags with {per_bag} {s} in each bag. {a} shares them equally among "
         f"{kids} friends. How many {s} does each friend get?")
    return q, [t, Step(t, "/", kids, "per_friend", sweets=s)]


def share_after_gift(rng):
    a, b = rng.sample(NAMES, 2)
    s = rng.choice(SWEETS)
    kids, each, g = n(rng, 2, 9), n(rng, 2, 20), n(rng, 2, 30)
    total = kids * each + g
    if total > MAX_INPUT:
        raise Retry
    rest = Step(total, "-", g, "sweets_left", P=a, sweets=s)
    q = (f"{a} has {total} {s} and gives {g} of them to {b}. {a} splits the rest equally "
         f"into {kids} jars. How many {s} are in each jar?")
    return q, [rest, Step(rest, "/", kids, "per_jar", sweets=s)]


def share_pizza(rng):
    people = n(rng, 2, 9)
    pizzas, slices, eat = n(rng, 2, 9), rng.choice([4, 6, 8, 10, 12]), n(rng, 2, 4)
    total = Step(pizzas, "*", slices, "slices")
    eaten = Step(people, "*", eat, "eaten")
    q = (f"A party has {pizzas} pizzas and each pizza is cut into {slices} slices. "
         f"{people} people eat {eat} slices each. How many slices are left?")
    return q, [total, eaten, Step(total, "-", eaten, "slices_left")]


def share_teams(rng):
    size, teams = n(rng, 2, 9), n(rng, 2, 20)
    total = size * teams
    boys = n(rng, 1, total - 1)
    girls = total - boys
    if boys > MAX_INPUT or girls > MAX_INPUT:
        raise Retry
    t = Step(boys, "+", girls, "students")
    q = (f"A class has {boys} boys and {girls} girls. The teacher makes teams of {size} students. "
         f"How many teams are there?")
    return q, [t, Step(t, "/", size, "teams")]


# --- family 3: rates ---

def rate_two_legs(rng):
    a = rng.choice(NAMES)
    s1, h1, s2, h2 = n(rng, 10, 90), n(rng, 2, 9), n(rng, 10, 90), n(rng, 2, 9)
    d1 = Step(s1, "*", h1, "first_part", P=a)
    d2 = Step(s2, "*", h2, "second_part", P=a)
    q = (f"{a} drives at {s1} miles per hour for {h1} hours, then at {s2} miles per hour for "
         f"{h2} hours. How many miles does {a} drive?")
    return q, [d1, d2, Step(d1, "+", d2, "trip", P=a)]


def rate_worker(rng):
    a = rng.choice(NAMES)
    _, gs = rng.choice(GOODS)
    r, h, d = n(rng, 2, 12), n(rng, 2, 9), n(rng, 2, 9)
    per_day = Step(r, "*", h, "per_day", P=a, items=gs)
    q = f"{a} makes {r} {gs} per hour and works {h} hours a day. How many {gs} does {a} make in {d} days?"
    return q, [per_day, Step(per_day, "*", d, "in_days", P=a, items=gs, n=d)]


def rate_tank(rng):
    r, minutes, start = n(rng, 2, 12), n(rng, 2, 12), n(rng, 2, 50)
    cap = apply(r * minutes, "+", start)
    space = Step(cap, "-", start, "room")
    q = (f"A tank holds {cap} liters and already has {start} liters in it. Water flows in at "
         f"{r} liters per minute. How many minutes until the tank is full?")
    return q, [space, Step(space, "/", r, "minutes")]


def rate_reading(rng):
    a = rng.choice(NAMES)
    p, d, extra = n(rng, 5, 20), n(rng, 2, 9), n(rng, 5, 40)
    read = Step(p, "*", d, "pages_read", P=a)
    book = apply(read.value, "+", extra)
    q = f"A book has {book} pages. {a} reads {p} pages a day for {d} days. How many pages are left to read?"
    return q, [read, Step(book, "-", read, "pages_left", P=a)]


# --- family 4: ages ---

def age_older_twice(rng):
    a, b, c = rng.sample(NAMES, 3)
    x, y = n(rng, 2, 30), n(rng, 2, 30)
    bx = Step(x, "+", y, "age", P=b)
    cx = Step(bx, "*", 2, "age", P=c)
    ab = Step(x, "+", bx, "ages_of_two", P=a, Q=b)
    q = (f"{a} is {x} years old. {b} is {y} years older than {a}. {c} is twice as old as {b}. "
         f"What is the sum of their ages?")
    return q, [bx, cx, ab, Step(ab, "+", cx, "ages_of_three")]


def age_future(rng):
    a, b = rng.sample(NAMES, 2)
    x, k, years = n(rng, 2, 20), n(rng, 2, 5), n(rng, 2, 30)
    bx = Step(x, "*", k, "age", P=b)
    q = f"{a} is {x} years old. {b} is {k} times as old as {a}. How old will {b} be in {years} years?"
    return q, [bx, Step(bx, "+", years, "age_later", P=b, n=years)]


def age_grandma(rng):
    a = rng.choice(NAMES)
    x, y = n(rng, 2, 15), n(rng, 18, 40)
    mom = Step(x, "+", y, "mother", P=a)
    gran = Step(mom, "*", 2, "grandmother", P=a)
    q = (f"{a} is {x} years old. {a}'s mother is {y} years older than {a}. {a}'s grandmother is "
         f"twice as old as the mother. How many years older than {a} is the grandmother?")
    return q, [mom, gran, Step(gran, "-", x, "older_by", P=a)]


def age_half(rng):
    a, b, c = rng.sample(NAMES, 3)
    half, y = n(rng, 2, 40), n(rng, 2, 30)
    x = 2 * half
    if x > MAX_INPUT:
        raise Retry
    bx = Step(x, "/", 2, "age", P=b)
    cx = Step(bx, "+", y, "age", P=c)
    q = (f"{a} is {x} years old. {b} is half as old as {a}. {c} is {y} years older than {b}. "
         f"What is the sum of the ages of {a} and {c}?")
    return q, [bx, cx, Step(x, "+", cx, "ages_of_two", P=a, Q=c)]


# --- family 5: comparisons ---

def cmp_more_fewer(rng):
    a, b, c = rng.sample(NAMES, 3)
    s = rng.choice(SWEETS)
    x, y, z = n(rng, 2, 60), n(rng, 2, 40), n(rng, 1, 30)
    bx = Step(x, "+", y, "has", P=b, sweets=s)
    cx = Step(bx, "-", z, "has", P=c, sweets=s)
    ab = Step(x, "+", bx, "two_have", P=a, Q=b, sweets=s)
    q = (f"{a} has {x} {s}. {b} has {y} more {s} than {a}. {c} has {z} fewer {s} than {b}. "
         f"How many {s} do they have together?")
    return q, [bx, cx, ab, Step(ab, "+", cx, "three_have", sweets=s)]


def cmp_times_more(rng):
    a, b = rng.sample(NAMES, 2)
    s = rng.choice(SWEETS)
    x, k = n(rng, 2, 40), n(rng, 2, 9)
    ax = Step(x, "*", k, "has", P=a, sweets=s)
    q = f"{b} has {x} {s}. {a} has {k} times as many {s} as {b}. How many more {s} does {a} have than {b}?"
    return q, [ax, Step(ax, "-", x, "more_than", P=a, Q=b, sweets=s)]


def cmp_trees(rng):
    h, k, cut = n(rng, 2, 30), n(rng, 2, 9), n(rng, 1, 20)
    tall = Step(h, "*", k, "big_tree")
    after = Step(tall, "-", cut, "after_cut")
    q = (f"A small tree is {h} feet tall. A big tree is {k} times as tall. The big tree is cut "
         f"down by {cut} feet. How many feet taller than the small tree is the big tree now?")
    return q, [tall, after, Step(after, "-", h, "taller")]


def cmp_scores(rng):
    a, b, c = rng.sample(NAMES, 3)
    x, y = n(rng, 10, 99), n(rng, 1, 9)
    bx = Step(x, "-", y, "scores", P=b)
    cx = Step(bx, "*", 2, "scores", P=c)
    ab = Step(x, "+", bx, "two_score", P=a, Q=b)
    q = (f"{a} scores {x} points. {b} scores {y} points fewer than {a}. {c} scores twice as many "
         f"points as {b}. How many points do they score in total?")
    return q, [bx, cx, ab, Step(ab, "+", cx, "three_score")]


# --- family 6: measures and money over time ---

def measure_recipe(rng):
    a = rng.choice(NAMES)
    c, b, h = n(rng, 2, 12), n(rng, 2, 9), n(rng, 1, 20)
    need = Step(c, "*", b, "flour", P=a)
    q = (f"A cake needs {c} cups of flour. {a} bakes {b} cakes and already has {h} cups of flour. "
         f"How many more cups of flour does {a} need?")
    return q, [need, Step(need, "-", h, "more_flour", P=a)]


def measure_garden(rng):
    rows, per, dead, picked = n(rng, 2, 20), n(rng, 2, 20), n(rng, 1, 30), n(rng, 1, 20)
    total = Step(rows, "*", per, "plants")
    alive = Step(total, "-", dead, "after_dying", n=dead)
    q = (f"A garden has {rows} rows with {per} plants in each row. {dead} plants die and {picked} "
         f"plants are given away. How many plants are left?")
    return q, [total, alive, Step(alive, "-", picked, "after_gift")]


def measure_savings(rng):
    a = rng.choice(NAMES)
    s, w, e = n(rng, 2, 40), n(rng, 2, 12), n(rng, 1, 60)
    saved = Step(s, "*", w, "saves", P=a)
    q = (f"{a} saves {s} dollars each week for {w} weeks, then spends {e} dollars on a game. "
         f"How many dollars does {a} have left?")
    return q, [saved, Step(saved, "-", e, "money_left", P=a)]


def measure_boxes(rng):
    a = rng.choice(NAMES)
    _, gs = rng.choice(GOODS)
    per_box, boxes, price = n(rng, 2, 12), n(rng, 2, 9), n(rng, 2, 30)
    items = apply(per_box, "*", boxes)
    k = Step(items, "/", per_box, "boxes", P=a)
    q = (f"{a} packs {items} {gs} into boxes of {per_box}. Each box sells for {price} dollars. "
         f"How many dollars does {a} get for all the boxes?")
    return q, [k, Step(k, "*", price, "box_sales", P=a)]


FAMILIES = {
    "shopping": [shop_two_items, shop_change, shop_returns, shop_budget],
    "sharing": [share_bags, share_after_gift, share_pizza, share_teams],
    "rates": [rate_two_legs, rate_worker, rate_tank, rate_reading],
    "ages": [age_older_twice, age_future, age_grandma, age_half],
    "comparisons": [cmp_more_fewer, cmp_times_more, cmp_trees, cmp_scores],
    "measures": [measure_recipe, measure_garden, measure_savings, measure_boxes],
}
TEMPLATES = [t for ts in FAMILIES.values() for t in ts]


def draw(rng, template):
    """(question, steps) from one template, drawing again until the numbers obey the rules."""
    while True:
        try:
            question, steps = template(rng)
        except Retry:
            continue
        if max(int(x) for x in re.findall(r"\d+", question)) <= MAX_INPUT:
            return question, steps


def make_problem(rng, template):
    """One problem from one template: {"question", "answer"} with the answer in GSM8K form."""
    question, steps = draw(rng, template)
    return {"question": question, "answer": write_solution(steps, rng)}


def generate(count, seed):
    """`count` problems, each from a template drawn at random; deterministic in `seed`."""
    rng = random.Random(seed)
    return [make_problem(rng, rng.choice(TEMPLATES)) for _ in range(count)]


def drill(rng, n_steps=8):
    """A document of bare worked steps with their working, drawn from the templates' own steps.
    Arithmetic practice, denser than whole problems; it goes into the training split only."""
    lines = []
    while len(lines) < n_steps:
        _, steps = draw(rng, rng.choice(TEMPLATES))
        for step in steps:
            working_lines, e = worked(step, rng)
            lines += working_lines + [e]
    return "\n".join(lines[:n_steps])


def format_prompt(question):
    """What the model is given: the question, then the cue to start the worked answer."""
    return f"Question: {question}\nAnswer:"


def format_document(question, answer):
    """One training document (the <|endoftext|> token is appended by the caller)."""
    return f"{format_prompt(question)} {answer}"


def final_answer(answer_text):
    """The number after '####' (GSM8K) or 'The answer is:' (MetaMathQA); None if there is none."""
    m = re.search(r"####\s*(-?[\d,\.]+)", answer_text) or re.search(r"answer is:?\s*(-?[\d,\.]+)", answer_text)
    return m.group(1).replace(",", "").rstrip(".") if m else None


def branching_stats(count=10_000, seed=0):
    """How much the answers branch, measured on `count` generated questions: the mean number
    of distinct solution texts per question and the mean entropy of a solution in bits."""
    rng = random.Random(seed)
    counts = [solution_count(draw(rng, rng.choice(TEMPLATES))[1]) for _ in range(count)]
    orders = [len(valid_orders(draw(rng, t)[1])) for t in TEMPLATES]
    return {"questions": count, "sentence kinds": len(WORDINGS),
            "kinds with >= 3 wordings": sum(len(w) >= 3 for w in WORDINGS.values()),
            "templates with independent steps": sum(o > 1 for o in orders),
            "mean distinct solutions per question": round(sum(counts) / count, 1),
            "mean bits per solution": round(sum(math.log2(c) for c in counts) / count, 2)}


if __name__ == "__main__":
    rng = random.Random(0)
    question, steps = draw(rng, age_older_twice)
    print(f"Question: {question}\n")
    for seed in range(3):  # one question, three of its solutions
        print(write_solution(steps, random.Random(seed)), "\n")
    for key, value in branching_stats().items():
        print(f"{key}: {value}")
