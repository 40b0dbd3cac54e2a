"""Write steerwidgets/datasets/capability_*.json: four small capability sets written for this project.

Arithmetic and instruction-following items are generated here and their answers computed by code; the
factual and commonsense items are hand-written below (one correct answer each, distractors clearly wrong).
The answer's position among the choices is spread evenly with a fixed seed. Run from the repository root:
``python scripts/make_capability_sets.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "steerwidgets" / "datasets"


def _item(prompt: str, correct: str, wrong: list[str], slot: int) -> dict:
    choices = list(wrong)
    choices.insert(slot % (len(wrong) + 1), correct)
    assert len(set(choices)) == len(choices), choices
    return {"prompt": prompt, "choices": choices, "answer": choices.index(correct)}


def arithmetic(rng: random.Random, n: int = 60) -> list[dict]:
    items: list[dict] = []
    seen: set[str] = set()
    i = 0
    while len(items) < n:
        op = ["+", "-", "*"][i % 3]
        if op == "+":
            a, b = rng.randint(2, 49), rng.randint(2, 49)
            value = a + b
        elif op == "-":
            a = rng.randint(20, 99)
            b = rng.randint(2, a - 5)
            value = a - b
        else:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            value = a * b
        offsets = rng.sample([-10, -2, -1, 1, 2, 10], 2)
        wrong = [str(value + d) for d in offsets]
        prompt = f"What is {a} {op} {b}? Answer with the number only."
        if prompt not in seen:
            seen.add(prompt)
            items.append(_item(prompt, str(value), wrong, rng.randrange(3)))
            i += 1
    assert all(
        eval(it["prompt"].split("What is ")[1].split("?")[0]) == int(it["choices"][it["answer"]])
        for it in items
    )
    return items


FACTUAL = [
    ("What is the capital of France?", "Paris", ["Madrid", "Berlin"]),
    ("What is the capital of Japan?", "Tokyo", ["Beijing", "Seoul"]),
    ("What is the capital of Italy?", "Rome", ["Vienna", "Athens"]),
    ("What is the capital of Germany?", "Berlin", ["Paris", "Warsaw"]),
    ("What is the capital of Spain?", "Madrid", ["Lisbon", "Rome"]),
    ("What is the capital of the United Kingdom?", "London", ["Dublin", "Edinburgh"]),
    ("What is the capital of Russia?", "Moscow", ["Kyiv", "Minsk"]),
    ("What is the capital of Egypt?", "Cairo", ["Nairobi", "Tunis"]),
    ("What is the capital of China?", "Beijing", ["Tokyo", "Bangkok"]),
    ("What is the capital of Canada?", "Ottawa", ["Sydney", "Oslo"]),
    ("What is the capital of Greece?", "Athens", ["Rome", "Cairo"]),
    ("What is the capital of Portugal?", "Lisbon", ["Madrid", "Paris"]),
    ("What is the capital of Norway?", "Oslo", ["Helsinki", "Berlin"]),
    ("What is the capital of Kenya?", "Nairobi", ["Cairo", "Lagos"]),
    ("What is the capital of Argentina?", "Buenos Aires", ["Lima", "Santiago"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Jupiter", "Neptune"]),
    ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Saturn"]),
    ("What is the largest planet in our solar system?", "Jupiter", ["Mercury", "Mars"]),
    ("What is the largest ocean on Earth?", "the Pacific Ocean", ["the Arctic Ocean", "the Indian Ocean"]),
    ("What gas do plants take in from the air to make food?", "carbon dioxide", ["helium", "neon"]),
    ("What is the chemical symbol for water?", "H2O", ["CO2", "NaCl"]),
    ("What is the chemical symbol for gold?", "Au", ["Ag", "Fe"]),
    ("How many days are there in a week?", "seven", ["five", "ten"]),
    ("How many legs does a spider have?", "eight", ["six", "four"]),
    ("How many legs does an insect have?", "six", ["eight", "ten"]),
    ("How many continents are there?", "seven", ["three", "twelve"]),
    ("How many months are there in a year?", "twelve", ["ten", "nine"]),
    ("How many hours are there in a day?", "24", ["12", "60"]),
    ("How many minutes are there in an hour?", "60", ["100", "24"]),
    ("At what temperature in Celsius does water freeze?", "0 degrees", ["50 degrees", "100 degrees"]),
    (
        "At what temperature in Celsius does water boil at sea level?",
        "100 degrees",
        ["0 degrees", "30 degrees"],
    ),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare", ["Charles Dickens", "Mark Twain"]),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", ["Vincent van Gogh", "Pablo Picasso"]),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong", ["Albert Einstein", "Isaac Newton"]),
    ("Who developed the theory of relativity?", "Albert Einstein", ["Charles Darwin", "Thomas Edison"]),
    ("What is the largest mammal in the world?", "the blue whale", ["the house cat", "the rabbit"]),
    ("What is the tallest animal in the world?", "the giraffe", ["the mouse", "the penguin"]),
    ("What is the fastest land animal?", "the cheetah", ["the snail", "the tortoise"]),
    ("What do bees make?", "honey", ["milk", "silk"]),
    ("What is the freezing point of water in Fahrenheit?", "32 degrees", ["80 degrees", "212 degrees"]),
    ("Which organ pumps blood through the human body?", "the heart", ["the liver", "the stomach"]),
    ("Which organ do humans use to breathe?", "the lungs", ["the kidneys", "the stomach"]),
    ("What is the main language spoken in Brazil?", "Portuguese", ["Spanish", "French"]),
    ("What is the main language spoken in Mexico?", "Spanish", ["Portuguese", "German"]),
    ("What currency is used in Japan?", "the yen", ["the euro", "the dollar"]),
    ("On which continent is Egypt?", "Africa", ["Europe", "South America"]),
    ("On which continent is Australia?", "Oceania", ["Europe", "Africa"]),
    ("What is the longest river in Africa?", "the Nile", ["the Thames", "the Seine"]),
    ("What is the tallest mountain on Earth?", "Mount Everest", ["Mount Fuji", "Ben Nevis"]),
    ("What star is at the centre of our solar system?", "the Sun", ["the Moon", "Sirius"]),
    ("What is the natural satellite of the Earth called?", "the Moon", ["the Sun", "Mars"]),
    ("What colour is the sky on a clear day?", "blue", ["green", "purple"]),
    ("What do caterpillars turn into?", "butterflies", ["spiders", "frogs"]),
    ("What is frozen water called?", "ice", ["steam", "sand"]),
    ("How many sides does a triangle have?", "three", ["four", "five"]),
    ("How many sides does a square have?", "four", ["three", "six"]),
    (
        "What is the boiling point of water in Fahrenheit at sea level?",
        "212 degrees",
        ["32 degrees", "100 degrees"],
    ),
    ("In which country are the pyramids of Giza?", "Egypt", ["Mexico", "India"]),
    ("Which animal is known as the king of the jungle?", "the lion", ["the sheep", "the duck"]),
    ("What is the hardest natural substance?", "diamond", ["chalk", "wax"]),
]


COMMONSENSE = [
    ("What do you use to cut paper?", "scissors", ["a spoon", "a pillow"]),
    (
        "Where do you keep ice cream so it does not melt?",
        "in the freezer",
        ["in the oven", "on the windowsill"],
    ),
    ("What do you wear on your feet?", "shoes", ["gloves", "a hat"]),
    ("What do you use to write on paper?", "a pen", ["a fork", "a towel"]),
    (
        "It is raining and you want to stay dry. What do you take outside?",
        "an umbrella",
        ["a fan", "sunglasses"],
    ),
    ("What do you drink when you are thirsty?", "water", ["sand", "glue"]),
    ("Where do people usually sleep at night?", "in a bed", ["in a bathtub", "on a bus"]),
    ("What do you use to unlock a door?", "a key", ["a banana", "a spoon"]),
    ("What happens to an ice cube left in a warm room?", "it melts", ["it grows", "it freezes harder"]),
    (
        "If you drop a glass on a stone floor, what will most likely happen?",
        "it breaks",
        ["it bounces up", "it floats"],
    ),
    ("What do you use to see in a dark room?", "a lamp", ["a blanket", "a cup"]),
    ("Where do fish live?", "in water", ["in trees", "in the desert sand"]),
    ("What do you need to bake a cake?", "an oven", ["a bicycle", "a hammer"]),
    (
        "What should you do when you feel very tired?",
        "go to sleep",
        ["run a marathon", "drink more coffee all night"],
    ),
    ("Which is heavier, a car or a feather?", "a car", ["a feather"]),
    ("Which is bigger, an elephant or a mouse?", "an elephant", ["a mouse"]),
    ("Which is hotter, fire or snow?", "fire", ["snow"]),
    ("Which moves faster, a plane or a snail?", "a plane", ["a snail"]),
    ("What do you use to call someone far away?", "a phone", ["a plate", "a brick"]),
    ("Where would you go to borrow a book?", "a library", ["a petrol station", "a swimming pool"]),
    ("Where would you go to buy bread?", "a bakery", ["a dentist", "a car wash"]),
    ("Where do you go when you are sick and need a doctor?", "a hospital", ["a cinema", "a beach"]),
    ("What do you put on a cut to keep it clean?", "a bandage", ["butter", "mud"]),
    ("What do you wear when it is cold outside?", "a warm coat", ["swimming trunks", "nothing"]),
    ("What do you use to eat soup?", "a spoon", ["a knife", "a comb"]),
    (
        "How do you make a room brighter at night?",
        "turn on the light",
        ["close the curtains", "turn off the lamp"],
    ),
    ("What do plants need to grow?", "water and sunlight", ["darkness and salt", "plastic bags"]),
    (
        "What should you do before crossing a busy road?",
        "look both ways",
        ["close your eyes", "run without looking"],
    ),
    ("Where does a bird usually build its nest?", "in a tree", ["in a fridge", "under the sea"]),
    ("What do you use to dry yourself after a shower?", "a towel", ["a newspaper", "a frying pan"]),
    ("What do you do with a broom?", "sweep the floor", ["cook pasta", "write letters"]),
    ("What do you use to brush your teeth?", "a toothbrush", ["a hairbrush", "a paintbrush"]),
    (
        "What happens to water when it is heated to 100 degrees Celsius?",
        "it boils",
        ["it freezes", "it turns into wood"],
    ),
    (
        "If a glass is full of water and you pour in more, what happens?",
        "it overflows",
        ["it shrinks", "it becomes empty"],
    ),
    ("What time of day does the sun rise?", "in the morning", ["at midnight", "in the late evening"]),
    ("Which season is usually the coldest?", "winter", ["summer"]),
    ("Which season is usually the hottest?", "summer", ["winter"]),
    ("What do cows produce that people drink?", "milk", ["orange juice", "coffee"]),
    ("Which animal barks?", "a dog", ["a fish", "a cat"]),
    ("Which animal says meow?", "a cat", ["a cow", "a dog"]),
    ("What do you need to open a locked box without breaking it?", "the key", ["a song", "a pillow"]),
    (
        "Where do you put dirty clothes to clean them?",
        "in the washing machine",
        ["in the oven", "in the freezer"],
    ),
    ("What do you use to boil water for tea?", "a kettle", ["a shoe", "a book"]),
    ("Where do you park a car?", "in a car park", ["on the roof of a house", "in a bathtub"]),
    ("What is a chair for?", "sitting on", ["eating", "swimming"]),
    ("What is a bed for?", "sleeping", ["cooking", "driving"]),
    ("What do you use to climb up to a high shelf?", "a ladder", ["a spoon", "a sock"]),
    ("What is the usual colour of grass in spring?", "green", ["black", "purple"]),
    ("Which would you use to carry water, a bucket or a net?", "a bucket", ["a net"]),
    (
        "Which would keep you warm in winter, a wool blanket or a paper fan?",
        "a wool blanket",
        ["a paper fan"],
    ),
    ("A baby is crying because it is hungry. What does it need?", "food", ["a haircut", "homework"]),
    (
        "What do you do at a red traffic light when driving?",
        "stop",
        ["speed up", "turn off the engine and leave"],
    ),
    ("What do you use to hear music privately?", "headphones", ["a helmet", "a scarf"]),
    ("What do you need to take a photo?", "a camera", ["a kettle", "a pillow"]),
    ("Where do you put letters you want to send?", "in a post box", ["in a river", "in a rubbish bin"]),
]


WORDS = [
    "apple",
    "river",
    "garden",
    "window",
    "yellow",
    "pencil",
    "summer",
    "castle",
    "orange",
    "silver",
    "rabbit",
    "forest",
    "planet",
    "candle",
    "basket",
    "mirror",
    "bridge",
    "dragon",
    "violin",
    "pepper",
]


def instructions(rng: random.Random, n: int = 60) -> list[dict]:
    items: list[dict] = []
    seen: set[str] = set()
    i = 0
    while len(items) < n:
        kind = i % 5
        word, other = rng.sample(WORDS, 2)
        if kind == 0:
            prompt = f"Write the word '{word}' in capital letters. Reply with the word only."
            correct, wrong = word.upper(), [word, word.capitalize()]
        elif kind == 1:
            prompt = f"Repeat this word exactly and nothing else: {word}"
            correct, wrong = word, [other, "no"]
        elif kind == 2:
            prompt = f"What is the first letter of the word '{word}'? Reply with the letter only."
            wrong_letters = [c for c in "bcdfghkmnstw" if c != word[0]]
            correct, wrong = word[0], rng.sample(wrong_letters, 2)
        elif kind == 3:
            prompt = f"Reply with the first of these two words only: {word}, {other}"
            correct, wrong = word, [other]
        else:
            prompt = f"Reply with the last word of this sentence only: The old man walked to the {word}."
            correct, wrong = word, ["man", "old"]
        if prompt not in seen:
            seen.add(prompt)
            items.append(_item(prompt, correct, wrong, rng.randrange(len(wrong) + 1)))
            i += 1
    return items


def handwritten(rows: list[tuple[str, str, list[str]]], rng: random.Random) -> list[dict]:
    return [_item(q, c, w, rng.randrange(len(w) + 1)) for q, c, w in rows]


def main() -> None:
    rng = random.Random(11)
    sets = {
        "arithmetic": arithmetic(rng),
        "factual": handwritten(FACTUAL, rng),
        "instructions": instructions(rng),
        "commonsense": handwritten(COMMONSENSE, rng),
    }
    for name, items in sets.items():
        assert 50 <= len(items) <= 100, (name, len(items))
        assert len({it["prompt"] for it in items}) == len(items), name
        (OUT / f"capability_{name}.json").write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n")
        print(name, len(items))


if __name__ == "__main__":
    main()
