"""
Synthetic grade-school math word problems with worked solutions, in GSM8K's form.

    question: "Mia buys 4 packs of pens at 12 dollars each ..."
    answer:   "The pens cost 4 * 12 = 48 dollars.\n...\n#### 60"

Every solution restates the quantities and computes each step as `a op b = c`, then ends
with `#### <number>`, so accuracy is an exact match on that last line. The generator is
made for a small model trained on a laptop CPU, with a difficulty floor so the task is not
trivial: 24 templates in 6 families, 2 to 4 arithmetic steps, + - * and exact /, inputs of
at most 2 digits, intermediate results of at most 3 digits.

Deterministic: the same `random.Random(seed)` gives the same problems.
"""
import random
import re

NAMES = ["Mia", "Leo", "Ava", "Noah", "Emma", "Liam", "Zoe", "Omar", "Ivy", "Sam", "Nora",
         "Ben", "Lucy", "Ravi", "Anna", "Tom", "Maya", "Jack", "Ella", "Kai"]
GOODS = [("pen", "pens"), ("book", "books"), ("apple", "apples"), ("cup", "cups"),
         ("ball", "balls"), ("hat", "hats"), ("toy", "toys"), ("card", "cards")]
SWEETS = ["candies", "cookies", "stickers", "marbles", "grapes", "shells"]

MAX_INPUT = 99      # inputs have at most 2 digits
MAX_RESULT = 999    # every intermediate result has at most 3 digits


class Retry(Exception):
    """The numbers drawn break a rule (a result too large or negative); draw again."""


def calc(a, op, b):
    """Return (result, "a op b = result"): one worked step, as GSM8K writes it."""
    if op == "+":
        c = a + b
    elif op == "-":
        c = a - b
    elif op == "*":
        c = a * b
    elif op == "/":
        if b == 0 or a % b:
            raise Retry
        c = a // b
    else:
        raise ValueError(f"unknown operator {op!r}")
    if not 0 <= c <= MAX_RESULT:
        raise Retry
    return c, f"{a} {op} {b} = {c}"


def n(rng, lo=2, hi=MAX_INPUT):
    return rng.randint(lo, hi)


def two_names(rng):
    return rng.sample(NAMES, 2)


def three_names(rng):
    return rng.sample(NAMES, 3)


# ---------------------------------------------------------------------------------------
# Each template draws its numbers, writes the question, and returns
# (question, [solution sentences], answer). Division is made exact by drawing the
# quotient first and multiplying.

# --- family 1: shopping ---

def shop_two_items(rng):
    a = rng.choice(NAMES)
    (g1, g1s), (g2, g2s) = rng.sample(GOODS, 2)
    n1, p1, n2, p2 = n(rng, 2, 9), n(rng, 2, 40), n(rng, 2, 9), n(rng, 2, 40)
    c1, e1 = calc(n1, "*", p1)
    c2, e2 = calc(n2, "*", p2)
    t, e3 = calc(c1, "+", c2)
    q = (f"{a} buys {n1} {g1s} at {p1} dollars each and {n2} {g2s} at {p2} dollars each. "
         f"How many dollars does {a} spend?")
    return q, [f"The {g1s} cost {e1} dollars.", f"The {g2s} cost {e2} dollars.",
               f"In total {a} spends {e3} dollars."], t


def shop_change(rng):
    a = rng.choice(NAMES)
    g, gs = rng.choice(GOODS)
    k, p, m = n(rng, 2, 9), n(rng, 2, 30), n(rng, 20, 99)
    c, e1 = calc(k, "*", p)
    left, e2 = calc(m, "-", c)
    q = f"{a} has {m} dollars and buys {k} {gs} that cost {p} dollars each. How many dollars does {a} have left?"
    return q, [f"The {gs} cost {e1} dollars.", f"{a} has {e2} dollars left."], left


def shop_returns(rng):
    a = rng.choice(NAMES)
    g, gs = rng.choice(GOODS)
    k, r, p = n(rng, 5, 30), n(rng, 1, 4), n(rng, 2, 30)
    kept, e1 = calc(k, "-", r)
    cost, e2 = calc(kept, "*", p)
    q = (f"{a} buys {k} {gs} at {p} dollars each, then returns {r} of them for a refund. "
         f"How many dollars does {a} spend on the {gs} that are kept?")
    return q, [f"{a} keeps {e1} {gs}.", f"They cost {e2} dollars."], cost


def shop_budget(rng):
    a, b = two_names(rng)
    g, gs = rng.choice(GOODS)
    p, count, give = n(rng, 2, 20), n(rng, 3, 40), n(rng, 1, 9)
    m, _ = calc(count, "*", p)
    if m > MAX_INPUT:
        raise Retry
    bought, e1 = calc(m, "/", p)
    left, e2 = calc(bought, "-", give)
    q = (f"{a} has {m} dollars and spends all of it on {gs} that cost {p} dollars each. "
         f"{a} then gives {give} {gs} to {b}. How many {gs} does {a} have now?")
    return q, [f"{a} buys {e1} {gs}.", f"After giving some away, {a} has {e2} {gs}."], left


# --- family 2: sharing ---

def share_bags(rng):
    a = rng.choice(NAMES)
    s = rng.choice(SWEETS)
    kids, each = n(rng, 2, 9), n(rng, 2, 40)
    bags = n(rng, 2, 9)
    total = kids * each
    if total % bags:
        raise Retry
    per_bag, _ = calc(total, "/", bags)
    t, e1 = calc(bags, "*", per_bag)
    share, e2 = calc(t, "/", kids)
    q = (f"{a} has {bags} bags with {per_bag} {s} in each bag. {a} shares them equally among "
         f"{kids} friends. How many {s} does each friend get?")
    return q, [f"There are {e1} {s}.", f"Each friend gets {e2} {s}."], share


def share_after_gift(rng):
    a, b = two_names(rng)
    s = rng.choice(SWEETS)
    kids, each, g = n(rng, 2, 9), n(rng, 2, 20), n(rng, 2, 30)
    total = kids * each + g
    if total > MAX_INPUT:
        raise Retry
    rest, e1 = calc(total, "-", g)
    share, e2 = calc(rest, "/", kids)
    q = (f"{a} has {total} {s} and gives {g} of them to {b}. {a} splits the rest equally "
         f"into {kids} jars. How many {s} are in each jar?")
    return q, [f"{a} has {e1} {s} left.", f"Each jar gets {e2} {s}."], share


def share_pizza(rng):
    people = n(rng, 2, 9)
    pizzas, slices, eat = n(rng, 2, 9), rng.choice([4, 6, 8, 10, 12]), n(rng, 2, 4)
    total, e1 = calc(pizzas, "*", slices)
    eaten, e2 = calc(people, "*", eat)
    left, e3 = calc(total, "-", eaten)
    q = (f"A party has {pizzas} pizzas and each pizza is cut into {slices} slices. "
         f"{people} people eat {eat} slices each. How many slices are left?")
    return q, [f"There are {e1} slices.", f"The people eat {e2} slices.", f"There are {e3} slices left."], left


def share_teams(rng):
    size = n(rng, 2, 9)
    teams = n(rng, 2, 20)
    total = size * teams
    boys = n(rng, 1, total - 1)
    girls = total - boys
    if boys > MAX_INPUT or girls > MAX_INPUT:
        raise Retry
    t, e1 = calc(boys, "+", girls)
    k, e2 = calc(t, "/", size)
    q = (f"A class has {boys} boys and {girls} girls. The teacher makes teams of {size} students. "
         f"How many teams are there?")
    return q, [f"There are {e1} students.", f"There are {e2} teams."], k


# --- family 3: rates ---

def rate_two_legs(rng):
    a = rng.choice(NAMES)
    s1, h1, s2, h2 = n(rng, 10, 90), n(rng, 2, 9), n(rng, 10, 90), n(rng, 2, 9)
    d1, e1 = calc(s1, "*", h1)
    d2, e2 = calc(s2, "*", h2)
    d, e3 = calc(d1, "+", d2)
    q = (f"{a} drives at {s1} miles per hour for {h1} hours, then at {s2} miles per hour for "
         f"{h2} hours. How many miles does {a} drive?")
    return q, [f"First {a} drives {e1} miles.", f"Then {a} drives {e2} miles.",
               f"{a} drives {e3} miles in total."], d


def rate_worker(rng):
    a = rng.choice(NAMES)
    g, gs = rng.choice(GOODS)
    r, h, d = n(rng, 2, 12), n(rng, 2, 9), n(rng, 2, 9)
    per_day, e1 = calc(r, "*", h)
    total, e2 = calc(per_day, "*", d)
    q = f"{a} makes {r} {gs} per hour and works {h} hours a day. How many {gs} does {a} make in {d} days?"
    return q, [f"Each day {a} makes {e1} {gs}.", f"In {d} days {a} makes {e2} {gs}."], total


def rate_tank(rng):
    r, minutes, start = n(rng, 2, 12), n(rng, 2, 12), n(rng, 2, 50)
    need = r * minutes
    cap, _ = calc(need, "+", start)
    space, e1 = calc(cap, "-", start)
    t, e2 = calc(space, "/", r)
    q = (f"A tank holds {cap} liters and already has {start} liters in it. Water flows in at "
         f"{r} liters per minute. How many minutes until the tank is full?")
    return q, [f"The tank needs {e1} more liters.", f"It takes {e2} minutes."], t


def rate_reading(rng):
    a = rng.choice(NAMES)
    p, d, extra = n(rng, 5, 20), n(rng, 2, 9), n(rng, 5, 40)
    read, e1 = calc(p, "*", d)
    book, _ = calc(read, "+", extra)
    left, e2 = calc(book, "-", read)
    q = f"A book has {book} pages. {a} reads {p} pages a day for {d} days. How many pages are left to read?"
    return q, [f"{a} reads {e1} pages.", f"There are {e2} pages left."], left


# --- family 4: ages ---

def age_older_twice(rng):
    a, b, c = three_names(rng)
    x, y = n(rng, 2, 30), n(rng, 2, 30)
    bx, e1 = calc(x, "+", y)
    cx, e2 = calc(bx, "*", 2)
    t1, e3 = calc(x, "+", bx)
    t, e4 = calc(t1, "+", cx)
    q = (f"{a} is {x} years old. {b} is {y} years older than {a}. {c} is twice as old as {b}. "
         f"What is the sum of their ages?")
    return q, [f"{b} is {e1} years old.", f"{c} is {e2} years old.",
               f"{a} and {b} together are {e3} years old.", f"All three together are {e4} years old."], t


def age_future(rng):
    a, b = two_names(rng)
    x, k, years = n(rng, 2, 20), n(rng, 2, 5), n(rng, 2, 30)
    bx, e1 = calc(x, "*", k)
    fut, e2 = calc(bx, "+", years)
    q = f"{a} is {x} years old. {b} is {k} times as old as {a}. How old will {b} be in {years} years?"
    return q, [f"{b} is {e1} years old now.", f"In {years} years {b} will be {e2} years old."], fut


def age_grandma(rng):
    a = rng.choice(NAMES)
    x, y = n(rng, 2, 15), n(rng, 18, 40)
    mom, e1 = calc(x, "+", y)
    gran, e2 = calc(mom, "*", 2)
    diff, e3 = calc(gran, "-", x)
    q = (f"{a} is {x} years old. {a}'s mother is {y} years older than {a}. {a}'s grandmother is "
         f"twice as old as the mother. How many years older than {a} is the grandmother?")
    return q, [f"The mother is {e1} years old.", f"The grandmother is {e2} years old.",
               f"The grandmother is {e3} years older than {a}."], diff


def age_half(rng):
    a, b, c = three_names(rng)
    half, y = n(rng, 2, 40), n(rng, 2, 30)
    x = 2 * half
    if x > MAX_INPUT:
        raise Retry
    bx, e1 = calc(x, "/", 2)
    cx, e2 = calc(bx, "+", y)
    t, e3 = calc(x, "+", cx)
    q = (f"{a} is {x} years old. {b} is half as old as {a}. {c} is {y} years older than {b}. "
         f"What is the sum of the ages of {a} and {c}?")
    return q, [f"{b} is {e1} years old.", f"{c} is {e2} years old.",
               f"Together {a} and {c} are {e3} years old."], t


# --- family 5: comparisons ---

def cmp_more_fewer(rng):
    a, b, c = three_names(rng)
    s = rng.choice(SWEETS)
    x, y, z = n(rng, 2, 60), n(rng, 2, 40), n(rng, 1, 30)
    bx, e1 = calc(x, "+", y)
    cx, e2 = calc(bx, "-", z)
    t1, e3 = calc(x, "+", bx)
    t, e4 = calc(t1, "+", cx)
    q = (f"{a} has {x} {s}. {b} has {y} more {s} than {a}. {c} has {z} fewer {s} than {b}. "
         f"How many {s} do they have together?")
    return q, [f"{b} has {e1} {s}.", f"{c} has {e2} {s}.", f"{a} and {b} have {e3} {s}.",
               f"Together they have {e4} {s}."], t


def cmp_times_more(rng):
    a, b = two_names(rng)
    s = rng.choice(SWEETS)
    x, k = n(rng, 2, 40), n(rng, 2, 9)
    ax, e1 = calc(x, "*", k)
    d, e2 = calc(ax, "-", x)
    q = f"{b} has {x} {s}. {a} has {k} times as many {s} as {b}. How many more {s} does {a} have than {b}?"
    return q, [f"{a} has {e1} {s}.", f"{a} has {e2} more {s} than {b}."], d


def cmp_trees(rng):
    h, k, cut = n(rng, 2, 30), n(rng, 2, 9), n(rng, 1, 20)
    tall, e1 = calc(h, "*", k)
    after, e2 = calc(tall, "-", cut)
    d, e3 = calc(after, "-", h)
    q = (f"A small tree is {h} feet tall. A big tree is {k} times as tall. The big tree is cut "
         f"down by {cut} feet. How many feet taller than the small tree is the big tree now?")
    return q, [f"The big tree was {e1} feet tall.", f"After the cut it is {e2} feet tall.",
               f"It is {e3} feet taller than the small tree."], d


def cmp_scores(rng):
    a, b, c = three_names(rng)
    x, y = n(rng, 10, 99), n(rng, 1, 9)
    bx, e1 = calc(x, "-", y)
    cx, e2 = calc(bx, "*", 2)
    t1, e3 = calc(x, "+", bx)
    t, e4 = calc(t1, "+", cx)
    q = (f"{a} scores {x} points. {b} scores {y} points fewer than {a}. {c} scores twice as many "
         f"points as {b}. How many points do they score in total?")
    return q, [f"{b} scores {e1} points.", f"{c} scores {e2} points.", f"{a} and {b} score {e3} points.",
               f"In total they score {e4} points."], t


# --- family 6: measures and money over time ---

def measure_recipe(rng):
    a = rng.choice(NAMES)
    c, b, h = n(rng, 2, 12), n(rng, 2, 9), n(rng, 1, 20)
    need, e1 = calc(c, "*", b)
    more, e2 = calc(need, "-", h)
    q = (f"A cake needs {c} cups of flour. {a} bakes {b} cakes and already has {h} cups of flour. "
         f"How many more cups of flour does {a} need?")
    return q, [f"{a} needs {e1} cups of flour.", f"{a} needs {e2} more cups."], more


def measure_garden(rng):
    rows, per, dead = n(rng, 2, 20), n(rng, 2, 20), n(rng, 1, 30)
    picked = n(rng, 1, 20)
    total, e1 = calc(rows, "*", per)
    alive, e2 = calc(total, "-", dead)
    left, e3 = calc(alive, "-", picked)
    q = (f"A garden has {rows} rows with {per} plants in each row. {dead} plants die and {picked} "
         f"plants are given away. How many plants are left?")
    return q, [f"There are {e1} plants.", f"After {dead} die there are {e2} plants.",
               f"After giving some away there are {e3} plants."], left


def measure_savings(rng):
    a = rng.choice(NAMES)
    s, w, e = n(rng, 2, 40), n(rng, 2, 12), n(rng, 1, 60)
    saved, e1 = calc(s, "*", w)
    left, e2 = calc(saved, "-", e)
    q = (f"{a} saves {s} dollars each week for {w} weeks, then spends {e} dollars on a game. "
         f"How many dollars does {a} have left?")
    return q, [f"{a} saves {e1} dollars.", f"{a} has {e2} dollars left."], left


def measure_boxes(rng):
    a = rng.choice(NAMES)
    g, gs = rng.choice(GOODS)
    per_box, boxes, price = n(rng, 2, 12), n(rng, 2, 9), n(rng, 2, 30)
    items, _ = calc(per_box, "*", boxes)
    k, e1 = calc(items, "/", per_box)
    earn, e2 = calc(k, "*", price)
    q = (f"{a} packs {items} {gs} into boxes of {per_box}. Each box sells for {price} dollars. "
         f"How many dollars does {a} get for all the boxes?")
    return q, [f"{a} fills {e1} boxes.", f"The boxes sell for {e2} dollars."], earn


FAMILIES = {
    "shopping": [shop_two_items, shop_change, shop_returns, shop_budget],
    "sharing": [share_bags, share_after_gift, share_pizza, share_teams],
    "rates": [rate_two_legs, rate_worker, rate_tank, rate_reading],
    "ages": [age_older_twice, age_future, age_grandma, age_half],
    "comparisons": [cmp_more_fewer, cmp_times_more, cmp_trees, cmp_scores],
    "measures": [measure_recipe, measure_garden, measure_savings, measure_boxes],
}
TEMPLATES = [t for ts in FAMILIES.values() for t in ts]

STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")  # one worked step, "12 * 4 = 48"


def make_problem(rng, template):
    """One problem from one template: {"question", "answer"} with the answer in GSM8K form."""
    while True:
        try:
            question, steps, result = template(rng)
        except Retry:
            continue
        if max(int(x) for x in re.findall(r"\d+", question)) <= MAX_INPUT:
            return {"question": question, "answer": "\n".join(steps) + f"\n#### {result}"}


def generate(count, seed):
    """`count` problems, each from a template drawn at random; deterministic in `seed`."""
    rng = random.Random(seed)
    return [make_problem(rng, rng.choice(TEMPLATES)) for _ in range(count)]


def drill(rng, n_steps=8):
    """A document of bare worked steps ("34 * 7 = 238"), drawn from the templates' own steps.
    A small model's bottleneck on these problems is the arithmetic, not the wording; drills
    give it that practice densely. They go into the training split only."""
    lines = []
    while len(lines) < n_steps:
        answer = make_problem(rng, rng.choice(TEMPLATES))["answer"]
        lines += [f"{a} {op} {b} = {c}" for a, op, b, c in STEP.findall(answer)]
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


if __name__ == "__main__":
    for p in generate(5, seed=0):
        print(p["question"], "\n" + p["answer"], "\n")
