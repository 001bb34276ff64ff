"""Seeded ruBABILong-style items at any context length (no public Russian generator exists).

QA1 — where is a person? People move between rooms; the last move wins.
QA2 — where is an object? A person takes an object (it travels with them) or leaves it (it stays where
it was left); the answer is where the object is after the last fact.

Facts are short sentences scattered, in order, through Russian filler text composed from rutune's own
phrase lists (a time phrase plus one of many independent clauses, sometimes two clauses joined), so no
line repeats verbatim at short lengths. Filler never names a person, a room or an object, so the facts
alone decide the answer. Items use LIBRA's fields (`length`, `context`, `input`, `positive_outputs`,
`negative_outputs`) plus `metadata` with the facts and the target token count.
"""

from __future__ import annotations

import random
from typing import Callable

PEOPLE = (("Мария", "f"), ("Иван", "m"), ("Анна", "f"), ("Пётр", "m"), ("Ольга", "f"), ("Сергей", "m"),
          ("Елена", "f"), ("Дмитрий", "m"), ("Наталья", "f"), ("Алексей", "m"))
# room (answer form) → (where to: accusative with its preposition)
ROOMS = {"кухня": "на кухню", "спальня": "в спальню", "ванная": "в ванную", "коридор": "в коридор",
         "сад": "в сад", "офис": "в офис"}
# object (answer/question form) → accusative
OBJECTS = {"яблоко": "яблоко", "мяч": "мяч", "книга": "книгу", "молоко": "молоко", "ключ": "ключ", "зонт": "зонт"}
MOVE = {"m": ("пошёл", "отправился", "вернулся", "перешёл", "направился"),
        "f": ("пошла", "отправилась", "вернулась", "перешла", "направилась")}
TAKE = {"m": ("взял", "забрал", "подобрал", "схватил"), "f": ("взяла", "забрала", "подобрала", "схватила")}
LEAVE = {"m": ("оставил", "бросил", "положил"), "f": ("оставила", "бросила", "положила")}

TIMES = ("Ранним утром", "К полудню", "Ближе к вечеру", "Поздней ночью", "В начале осени", "Прошлой зимой",
         "Весной", "В тот год", "Через неделю", "Накануне праздника", "Однажды", "Незадолго до рассвета",
         "Всё лето", "В середине марта", "После обеда", "На следующий день", "Тем временем", "Как обычно",
         "Вскоре", "Долгое время")
CLAUSES = (
    "над рекой поднялся густой туман", "по мостовой медленно проехала старая телега",
    "в небе кружили чайки", "ветер гнал по полю сухую траву", "над городом шёл мелкий дождь",
    "в соседней деревне звонили колокола", "на площади открылась шумная ярмарка",
    "по радио передавали прогноз погоды", "у пристани покачивались рыбацкие лодки",
    "вдали показались тёмные тучи", "в лесу пахло хвоей и грибами", "по шоссе тянулись грузовики",
    "на станции объявили о задержке поезда", "в парке облетела листва", "солнце едва пробивалось сквозь облака",
    "на холме паслось стадо овец", "по льду пробежала трещина", "в окнах напротив зажёгся свет",
    "на заводе сменилась бригада", "в библиотеке стояла полная тишина", "по улице прошёл духовой оркестр",
    "мороз разрисовал стёкла узорами", "в порту разгружали баржу с углём", "над полями пролетел самолёт",
    "на рынке подорожала клубника", "в театре давали новую пьесу", "у берега плескалась мелкая рыба",
    "снег лежал до самого апреля", "в горах сошла небольшая лавина", "на перекрёстке сломался светофор",
    "в музее открылась выставка старинных карт", "по каналу прошла баржа с песком",
    "в школе начались каникулы", "над озером сверкнула молния", "в пекарне испекли свежий хлеб",
    "на мосту собрались любопытные прохожие", "по небу плыли лёгкие облака", "в степи зацвели маки",
    "на вокзале было многолюдно", "у ворот залаяла собака", "в роще пели соловьи",
    "на реке начался ледоход", "в газетах писали о новом мосте", "по тропинке пробежал заяц",
    "в долине созрел виноград", "на крыше ворковали голуби", "в кузнице звенел молот",
    "вдоль дороги выросли новые дома", "на стадионе прошёл футбольный матч", "в ущелье шумел водопад",
    "на аэродроме приземлился почтовый самолёт", "в поле убирали пшеницу", "над лугом порхали бабочки",
    "по бульвару гуляли отдыхающие", "в типографии печатали свежий номер журнала",
    "на озере появились первые лебеди", "в доме культуры репетировал хор", "у фонтана играли дети",
    "в обсерватории наблюдали комету", "по реке сплавляли лес", "на опушке стоял старый дуб",
    "в мастерской чинили часы", "над тайгой висело низкое небо", "в порту загудел пароход",
    "на берегу сушились сети", "в переулке открылось маленькое кафе", "по склону спускались лыжники",
    "в оранжерее распустились орхидеи", "на площади установили высокую ёлку",
    "в архиве нашли старые письма", "вдалеке прогремел гром", "на болоте кричали цапли",
    "в деревне топили печи", "по проводам бежал ток", "на станции сменили расписание",
)
JOINERS = (", а ", ", и ", ", пока ", ", хотя ", ", но ")
FORBIDDEN_IN_FILLER = tuple(n for n, _ in PEOPLE) + ("кухн", "спальн", "ванн", "коридор", "сад", "офис",
                                                      "яблок", "мяч", "книг", "молок", "ключ", "зонт")


def parse_length(label: str | int) -> int:
    """'4k' → 4096 tokens, '512' → 512."""
    if isinstance(label, int):
        return label
    text = label.strip().lower()
    if text.endswith("k") and text[:-1].isdigit():
        return int(text[:-1]) * 1024
    if text.isdigit():
        return int(text)
    raise ValueError(f"length {label!r}: expected e.g. 4k or 512")


def filler_sentence(rng: random.Random) -> str:
    first = rng.choice(CLAUSES)
    if rng.random() < 0.3:
        second = rng.choice(CLAUSES)
        if second != first:
            first = first + rng.choice(JOINERS) + second
    return f"{rng.choice(TIMES)} {first}."


def _qa1_facts(rng: random.Random) -> tuple[list[str], str, str]:
    people = rng.sample(PEOPLE, rng.randint(2, 4))
    where: dict[str, str] = {}
    facts = []
    for _ in range(rng.randint(4, 8)):
        name, gender = rng.choice(people)
        room = rng.choice([r for r in ROOMS if r != where.get(name)])
        where[name] = room
        facts.append(f"{name} {rng.choice(MOVE[gender])} {ROOMS[room]}.")
    asked = rng.choice(sorted(where))
    return facts, f"Где {asked}?", where[asked]


def _qa2_facts(rng: random.Random) -> tuple[list[str], str, str]:
    while True:
        people = rng.sample(PEOPLE, rng.randint(2, 3))
        objects = rng.sample(sorted(OBJECTS), rng.randint(1, 3))
        where: dict[str, str] = {}
        holder: dict[str, str] = {}  # object → person carrying it
        lying: dict[str, str] = {}  # object → room it was left in
        taken: set[str] = set()
        facts = []
        for _ in range(rng.randint(6, 11)):
            name, gender = rng.choice(people)
            carried = [o for o, h in holder.items() if h == name]
            free = [o for o in objects if o not in holder and name in where and lying.get(o, where[name]) == where[name]]
            kind = rng.choice(["move", "move"] + (["take"] if free else []) + (["leave"] if carried else []))
            if kind == "move":
                room = rng.choice([r for r in ROOMS if r != where.get(name)])
                where[name] = room
                facts.append(f"{name} {rng.choice(MOVE[gender])} {ROOMS[room]}.")
            elif kind == "take":
                obj = rng.choice(free)
                holder[obj] = name
                lying.pop(obj, None)
                taken.add(obj)
                facts.append(f"{name} {rng.choice(TAKE[gender])} {OBJECTS[obj]}.")
            else:
                obj = rng.choice(carried)
                del holder[obj]
                lying[obj] = where[name]
                facts.append(f"{name} {rng.choice(LEAVE[gender])} {OBJECTS[obj]}.")
        located = {o: where[holder[o]] if o in holder else lying[o] for o in taken}
        if located:
            asked = rng.choice(sorted(located))
            return facts, f"Где {asked}?", located[asked]


def generate_item(task: str, length: str | int, index: int, seed: int,
                  count_tokens: Callable[[str], int]) -> dict:
    """One item whose context has at most `length` tokens (within a sentence of it) by `count_tokens`."""
    target = parse_length(length)
    rng = random.Random(f"{seed}:{task}:{length}:{index}")
    facts, question, answer = (_qa1_facts if task == "qa1" else _qa2_facts)(rng)
    budget = target - sum(count_tokens(" " + f) for f in facts)
    filler: list[str] = []
    used = 0
    while True:
        s = filler_sentence(rng)
        cost = count_tokens(" " + s)
        if used + cost > budget:
            break
        filler.append(s)
        used += cost
    slots = sorted(rng.randint(0, len(filler)) for _ in facts)
    pieces: list[str] = []
    k = 0
    for pos in range(len(filler) + 1):
        while k < len(facts) and slots[k] == pos:
            pieces.append(facts[k])
            k += 1
        if pos < len(filler):
            pieces.append(filler[pos])
    context = " ".join(pieces)
    while count_tokens(context) > target:  # sums of per-sentence counts can undershoot by a few merges
        drop = max(i for i, p in enumerate(pieces) if p not in facts)
        pieces.pop(drop)
        context = " ".join(pieces)
    label = length if isinstance(length, str) else str(length)
    return {"length": label, "context": context, "input": question, "positive_outputs": [answer],
            "negative_outputs": sorted(r for r in ROOMS if r != answer),
            "metadata": {"id": f"gen-{label}-{index}", "facts": facts, "target_tokens": target,
                         "seed": seed}}


def generate_items(task: str, lengths: list[str], n_per_length: int, seed: int,
                   count_tokens: Callable[[str], int]) -> list[dict]:
    if task not in ("qa1", "qa2"):
        raise ValueError(f"generator task {task!r}: only qa1 and qa2")
    return [generate_item(task, length, i, seed, count_tokens) for length in lengths for i in range(n_per_length)]
