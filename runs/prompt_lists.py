"""Word and topic lists for runs/make_prompts.py (the self-distillation prompt mix).

This module only holds data: format instructions, names, objects, facts and topics that the
generator combines with its templates. It has no side effects and nothing to run; edit a list
here and rerun ``python3 runs/make_prompts.py --output overfill/data/prompts-mix.jsonl --seed 0``.

Every question that is written out in full here must have one clear, short answer. Lists are
plain Python lists or dicts (never sets) so that the generator stays deterministic.
"""

# ---------------------------------------------------------------------------------------------
# Format instructions, by kind. "suffix" phrasings go after the question, "prefix" ones before.
# The generator also strips every phrase listed here when it compares prompts with the eval set.
# ---------------------------------------------------------------------------------------------

INSTRUCTIONS = {
    "one_word": {
        "suffix": [
            "Answer in one word.", "Reply with one word only.", "One word, please.",
            "Use a single word.", "Respond with just one word.", "Give a one-word answer.",
            "Answer with a single word.", "Reply in one word.", "Your answer should be one word.",
        ],
        "prefix": ["In one word:", "One-word answer:", "Answer in one word:", "Reply with one word:"],
    },
    "number": {
        "suffix": [
            "Answer with just the number, in digits.", "Give only the number.",
            "Reply with a number only.", "Just the number, please.", "Answer with digits only.",
            "Respond with only the final number.", "Write only the number.",
            "Give the answer as a number.", "Only the number, no explanation.",
        ],
        "prefix": ["Give only the number:", "Answer with just the number:", "Number only:",
                   "Reply with digits only:"],
    },
    "yes_no": {
        "suffix": [
            "Answer yes or no.", "Yes or no?", "Reply with Yes or No only.", "Just say yes or no.",
            "Answer with a single word: yes or no.", "Respond with only Yes or No.",
        ],
        "prefix": ["Answer with only Yes or No:", "Yes or no:", "Answer yes or no:",
                   "Reply with only yes or no:"],
    },
    "true_false": {
        "suffix": [
            "True or false?", "Is this true or false?", "Answer True or False.",
            "Reply with True or False only.", "Is that statement true or false? One word.",
        ],
        "prefix": ["True or false:", "True or false?", "Answer True or False:",
                   "Say whether this is true or false:"],
    },
    "letter": {
        "suffix": [
            "Respond with a single letter.", "Answer with the letter only.",
            "Reply with just the letter.", "Choose one letter.", "Give only the letter of the answer.",
        ],
        "prefix": ["Respond with a single letter.", "Answer with the letter only.",
                   "Pick one option and reply with its letter."],
    },
    "few_words": {
        "suffix": [
            "Answer in a few words.", "Keep it to a few words.", "Short answer only.",
            "Answer briefly, in under five words.", "A few words are enough.",
        ],
        "prefix": ["Answer in a few words:", "Short answer:", "In a few words:"],
    },
    "just_answer": {
        "suffix": [
            "Just the answer, please.", "Give only the answer.", "No explanation needed.",
            "Only the answer, no explanation.", "Reply with the answer only.",
        ],
        "prefix": ["Just the answer:", "Answer only:", "Give only the answer:"],
    },
}

# Phrases used by the eval set or likely paraphrases of them; stripped before comparing.
EXTRA_STRIP_PHRASES = [
    "Answer with only Yes or No", "Answer with just the number, in digits", "Answer in one word",
    "in one word", "in digits", "yes or no", "true or false", "one word", "just the number",
]

# ---------------------------------------------------------------------------------------------
# People, objects and units for word problems.
# ---------------------------------------------------------------------------------------------

NAMES = [
    "Tom", "Sara", "Anna", "Liam", "Maya", "Omar", "Priya", "Lucas", "Emma", "Noah", "Aisha",
    "Mateo", "Chloe", "Kenji", "Fatima", "Ben", "Lena", "Carlos", "Zoe", "Ivan", "Grace", "Yusuf",
    "Mia", "Daniel", "Hana", "Leo", "Nora", "Samuel", "Elena", "Ravi", "Julia", "Kofi", "Rosa",
    "Felix", "Amara", "Hugo", "Ines", "Jack", "Mei", "Oscar", "Lily", "Diego", "Sofia", "Ahmed",
    "Clara", "Finn", "Nadia", "Theo", "Ella", "Marco",
]

# (singular, plural) countable objects
OBJECTS = [
    ("apple", "apples"), ("orange", "oranges"), ("pencil", "pencils"), ("marble", "marbles"),
    ("sticker", "stickers"), ("book", "books"), ("cookie", "cookies"), ("balloon", "balloons"),
    ("shell", "shells"), ("stamp", "stamps"), ("card", "cards"), ("toy car", "toy cars"),
    ("egg", "eggs"), ("flower", "flowers"), ("candle", "candles"), ("button", "buttons"),
    ("coin", "coins"), ("cupcake", "cupcakes"), ("banana", "bananas"), ("crayon", "crayons"),
    ("marker", "markers"), ("sandwich", "sandwiches"), ("bottle", "bottles"), ("plate", "plates"),
    ("ticket", "tickets"), ("tomato", "tomatoes"), ("strawberry", "strawberries"),
    ("notebook", "notebooks"), ("rock", "rocks"), ("puzzle", "puzzles"), ("sock", "socks"),
    ("lemon", "lemons"), ("muffin", "muffins"), ("postcard", "postcards"), ("feather", "feathers"),
]

# (container singular, container plural) for "N boxes with M objects each"
CONTAINERS = [
    ("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"), ("tray", "trays"),
    ("packet", "packets"), ("crate", "crates"), ("shelf", "shelves"), ("bowl", "bowls"),
    ("drawer", "drawers"),
]

PLACES_SMALL = [
    "in the garden", "at the park", "in the classroom", "at the market", "on the table",
    "in the kitchen", "at the library", "on the bus", "in the shop", "at the beach",
]

# (singular, plural, unit price noun) for money problems
BUYABLES = [
    ("notebook", "notebooks"), ("ice cream", "ice creams"), ("pen", "pens"), ("ticket", "tickets"),
    ("sandwich", "sandwiches"), ("comic book", "comic books"), ("bus ticket", "bus tickets"),
    ("cup of coffee", "cups of coffee"), ("loaf of bread", "loaves of bread"), ("apple", "apples"),
    ("bottle of water", "bottles of water"), ("postcard", "postcards"), ("pie", "pies"),
]

CURRENCIES = ["dollars", "euros", "pounds"]

# Unit conversions: (big unit plural, small unit plural, factor, big singular)
UNIT_CONVERSIONS = [
    ("meters", "centimeters", 100, "meter"), ("kilometers", "meters", 1000, "kilometer"),
    ("hours", "minutes", 60, "hour"), ("minutes", "seconds", 60, "minute"),
    ("days", "hours", 24, "day"), ("weeks", "days", 7, "week"), ("years", "months", 12, "year"),
    ("kilograms", "grams", 1000, "kilogram"), ("liters", "milliliters", 1000, "liter"),
    ("centimeters", "millimeters", 10, "centimeter"), ("feet", "inches", 12, "foot"),
    ("yards", "feet", 3, "yard"), ("dozen", "items", 12, "dozen"),
    ("dollars", "cents", 100, "dollar"), ("decades", "years", 10, "decade"),
    ("centuries", "years", 100, "century"),
]

# ---------------------------------------------------------------------------------------------
# Categories: every member clearly belongs to its category and to no other category here.
# Used for yes/no, true/false, multiple choice, odd-one-out and "name the category".
# ---------------------------------------------------------------------------------------------

CATEGORIES = {
    "fruit": ["apple", "banana", "cherry", "grape", "mango", "pear", "peach", "plum", "lemon",
              "orange", "pineapple", "strawberry", "watermelon", "kiwi", "apricot", "papaya"],
    "vegetable": ["carrot", "potato", "onion", "cabbage", "broccoli", "spinach", "lettuce",
                  "celery", "cauliflower", "radish", "turnip", "leek", "beetroot", "parsnip"],
    "mammal": ["dog", "cat", "horse", "cow", "lion", "tiger", "elephant", "whale", "dolphin",
               "bear", "rabbit", "mouse", "giraffe", "monkey", "zebra", "bat", "goat", "sheep"],
    "bird": ["eagle", "sparrow", "parrot", "owl", "penguin", "pigeon", "swan", "duck", "robin",
             "crow", "flamingo", "ostrich", "peacock", "hawk", "seagull", "woodpecker"],
    "fish": ["salmon", "tuna", "trout", "cod", "goldfish", "shark", "sardine", "carp", "herring"],
    "insect": ["ant", "bee", "butterfly", "beetle", "mosquito", "grasshopper", "ladybug",
               "dragonfly", "moth", "wasp", "cricket", "termite"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black",
              "white", "gray", "violet", "turquoise", "crimson"],
    "musical instrument": ["piano", "guitar", "violin", "drum", "flute", "trumpet", "cello",
                           "harp", "saxophone", "clarinet", "trombone", "banjo", "ukulele"],
    "sport": ["soccer", "tennis", "basketball", "baseball", "volleyball", "golf", "rugby",
              "cricket", "hockey", "badminton", "swimming", "cycling", "boxing"],
    "vehicle": ["car", "bus", "truck", "bicycle", "motorcycle", "train", "tram", "van",
                "scooter", "taxi", "tractor", "ambulance"],
    "piece of furniture": ["chair", "table", "sofa", "bed", "wardrobe", "desk", "bookshelf",
                           "stool", "dresser", "armchair", "bench", "cupboard"],
    "tool": ["hammer", "screwdriver", "wrench", "saw", "drill", "pliers", "chisel", "shovel",
             "rake", "axe", "spanner", "trowel"],
    "piece of clothing": ["shirt", "jacket", "sweater", "skirt", "dress", "coat", "scarf",
                          "sock", "glove", "hat", "belt", "blouse", "hoodie"],
    "body part": ["hand", "foot", "knee", "elbow", "shoulder", "nose", "ear", "toe", "ankle",
                  "wrist", "chin", "forehead", "thumb", "neck"],
    "planet": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"],
    "metal": ["iron", "copper", "platinum", "titanium", "aluminum", "zinc", "tin", "lead", "nickel"],
    "shape": ["circle", "square", "triangle", "rectangle", "hexagon", "pentagon", "oval",
              "octagon", "rhombus"],
    "drink": ["tea", "coffee", "milk", "juice", "lemonade", "water", "cocoa", "smoothie"],
}

# Words that appear in more than one category above; avoided in membership questions.
AMBIGUOUS_MEMBERS = ["orange", "cricket", "kiwi", "Mercury"]

# ---------------------------------------------------------------------------------------------
# Geography. (country, capital, continent, main language); None where the answer is not clear-cut.
# ---------------------------------------------------------------------------------------------

COUNTRIES = [
    ("France", "Paris", "Europe", "French"), ("Italy", "Rome", "Europe", "Italian"),
    ("Poland", "Warsaw", "Europe", "Polish"), ("Japan", "Tokyo", "Asia", "Japanese"),
    ("Spain", "Madrid", "Europe", "Spanish"), ("Germany", "Berlin", "Europe", "German"),
    ("Egypt", "Cairo", "Africa", "Arabic"), ("China", "Beijing", "Asia", "Chinese"),
    ("Greece", "Athens", "Europe", "Greek"), ("Portugal", "Lisbon", "Europe", "Portuguese"),
    ("Norway", "Oslo", "Europe", "Norwegian"), ("Sweden", "Stockholm", "Europe", "Swedish"),
    ("Finland", "Helsinki", "Europe", "Finnish"), ("Denmark", "Copenhagen", "Europe", "Danish"),
    ("Netherlands", "Amsterdam", "Europe", "Dutch"), ("Belgium", "Brussels", "Europe", None),
    ("Hungary", "Budapest", "Europe", "Hungarian"), ("Czech Republic", "Prague", "Europe", "Czech"),
    ("Romania", "Bucharest", "Europe", "Romanian"), ("Turkey", "Ankara", None, "Turkish"),
    ("India", "New Delhi", "Asia", None), ("Vietnam", "Hanoi", "Asia", "Vietnamese"),
    ("Indonesia", "Jakarta", "Asia", "Indonesian"), ("Philippines", "Manila", "Asia", "Filipino"),
    ("Iran", "Tehran", "Asia", "Persian"), ("Iraq", "Baghdad", "Asia", "Arabic"),
    ("Saudi Arabia", "Riyadh", "Asia", "Arabic"), ("Kenya", "Nairobi", "Africa", "Swahili"),
    ("Nigeria", "Abuja", "Africa", "English"), ("Ghana", "Accra", "Africa", "English"),
    ("Morocco", "Rabat", "Africa", "Arabic"), ("Ethiopia", "Addis Ababa", "Africa", "Amharic"),
    ("Argentina", "Buenos Aires", "South America", "Spanish"),
    ("Peru", "Lima", "South America", "Spanish"), ("Chile", "Santiago", "South America", "Spanish"),
    ("Colombia", "Bogota", "South America", "Spanish"),
    ("Venezuela", "Caracas", "South America", "Spanish"),
    ("Brazil", "Brasilia", "South America", "Portuguese"),
    ("Mexico", "Mexico City", "North America", "Spanish"),
    ("Canada", "Ottawa", "North America", None),
    ("Australia", "Canberra", "Oceania", "English"),
    ("New Zealand", "Wellington", "Oceania", "English"),
    ("Switzerland", "Bern", "Europe", None), ("Ireland", "Dublin", "Europe", "English"),
    ("Austria", "Vienna", "Europe", "German"), ("Thailand", "Bangkok", "Asia", "Thai"),
    ("South Korea", "Seoul", "Asia", "Korean"), ("Ukraine", "Kyiv", "Europe", "Ukrainian"),
    ("Cuba", "Havana", "North America", "Spanish"), ("Jamaica", "Kingston", "North America", "English"),
]

# Cities and the country they are in (for "In which country is X?")
CITIES = [
    ("Barcelona", "Spain"), ("Milan", "Italy"), ("Munich", "Germany"), ("Osaka", "Japan"),
    ("Shanghai", "China"), ("Mumbai", "India"), ("Toronto", "Canada"), ("Sydney", "Australia"),
    ("Rio de Janeiro", "Brazil"), ("Marseille", "France"), ("Istanbul", "Turkey"),
    ("Krakow", "Poland"), ("Porto", "Portugal"), ("Venice", "Italy"), ("Kyoto", "Japan"),
    ("Melbourne", "Australia"), ("Chicago", "the United States"), ("Vancouver", "Canada"),
    ("Lyon", "France"), ("Seville", "Spain"), ("Hamburg", "Germany"), ("Edinburgh", "Scotland"),
    ("Alexandria", "Egypt"), ("Cape Town", "South Africa"), ("Auckland", "New Zealand"),
]

# Landmarks and the city they are in
LANDMARKS = [
    ("the Colosseum", "Rome"), ("the Statue of Liberty", "New York"), ("Big Ben", "London"),
    ("the Sagrada Familia", "Barcelona"), ("the Brandenburg Gate", "Berlin"),
    ("the Acropolis", "Athens"), ("the Sydney Opera House", "Sydney"),
    ("the Golden Gate Bridge", "San Francisco"), ("the Kremlin", "Moscow"),
    ("the Leaning Tower", "Pisa"), ("the Louvre museum", "Paris"), ("Times Square", "New York"),
]

# Short factual geography questions with one clear answer (question text only).
GEOGRAPHY_QUESTIONS = [
    "What is the largest ocean on Earth?", "What is the longest river in Africa?",
    "Which continent is Brazil in?", "Which desert is the largest hot desert in the world?",
    "What is the highest mountain in the world?", "Which country has the largest population in South America?",
    "On which continent is the Sahara Desert?", "Which ocean lies between Europe and North America?",
    "What is the smallest continent?", "Which country is shaped like a boot?",
    "Which river flows through Paris?", "Which river flows through London?",
    "Which sea lies between Europe and Africa?", "Which continent is home to kangaroos?",
    "Which is the coldest continent?", "What is the largest country in the world by area?",
    "Which country is famous for the pyramids of Giza?", "Which mountain range contains Mount Everest?",
    "What is the name of the line that divides the Earth into north and south halves?",
    "Which US state is made up of islands in the Pacific Ocean?",
    "Which country is directly north of the United States?", "What is the capital city of Scotland?",
    "Which ocean is to the east of Africa?", "Which continent is Argentina in?",
    "What is the largest island in the world?",
]

# ---------------------------------------------------------------------------------------------
# Words: opposites, synonyms, plurals, past tenses, spelling.
# ---------------------------------------------------------------------------------------------

OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("big", "small"), ("day", "night"), ("fast", "slow"),
    ("happy", "sad"), ("wet", "dry"), ("full", "empty"), ("north", "south"), ("push", "pull"),
    ("rich", "poor"), ("early", "late"), ("summer", "winter"), ("tall", "short"),
    ("open", "closed"), ("light", "dark"), ("hard", "soft"), ("loud", "quiet"), ("old", "new"),
    ("thick", "thin"), ("heavy", "light"), ("inside", "outside"), ("win", "lose"),
    ("buy", "sell"), ("begin", "end"), ("left", "right"), ("east", "west"), ("above", "below"),
    ("strong", "weak"), ("clean", "dirty"), ("brave", "cowardly"), ("friend", "enemy"),
    ("arrive", "leave"), ("remember", "forget"), ("always", "never"), ("ancient", "modern"),
    ("cheap", "expensive"), ("deep", "shallow"), ("wide", "narrow"), ("smooth", "rough"),
    ("sweet", "sour"), ("asleep", "awake"), ("accept", "refuse"), ("entrance", "exit"),
    ("question", "answer"), ("laugh", "cry"), ("sunrise", "sunset"), ("giant", "dwarf"),
    ("increase", "decrease"), ("maximum", "minimum"), ("victory", "defeat"), ("noisy", "silent"),
    ("generous", "selfish"), ("polite", "rude"), ("float", "sink"), ("borrow", "lend"),
    ("arrival", "departure"), ("import", "export"), ("visible", "invisible"), ("tight", "loose"),
]

SYNONYMS = [
    "big", "small", "happy", "sad", "fast", "angry", "smart", "pretty", "begin", "end", "easy",
    "difficult", "quiet", "loud", "tired", "scared", "funny", "rich", "brave", "strange", "huge",
    "tiny", "shout", "look", "choose", "help", "buy", "rapid", "correct", "wealthy", "cold",
    "delicious", "gift", "journey", "friend", "error", "answer", "stone", "street", "cautious",
    "enormous", "ancient", "calm", "purchase", "assist", "repair", "fix", "simple", "large",
]

PLURALS = [
    "child", "mouse", "tooth", "foot", "goose", "man", "woman", "person", "leaf", "knife",
    "wolf", "half", "box", "bus", "city", "baby", "potato", "hero", "sheep", "fish", "deer",
    "cactus", "ox", "life", "wife", "party", "church", "glass", "dish", "story", "key", "toy",
    "berry", "calf", "shelf", "loaf", "thief", "fox", "watch", "lady",
]

PAST_TENSES = [
    "go", "eat", "see", "run", "swim", "write", "read", "drink", "sing", "buy", "bring", "think",
    "catch", "teach", "fly", "speak", "take", "give", "drive", "ride", "break", "choose", "forget",
    "begin", "sleep", "feel", "keep", "leave", "meet", "pay", "sell", "tell", "win", "throw",
    "grow", "know", "draw", "fall", "hold", "stand", "understand", "wear", "build", "send", "lose",
]

# Words for spelling questions (first/last letter, number of letters, alphabetical order).
SPELLING_WORDS = [
    "apple", "banana", "elephant", "guitar", "window", "pencil", "garden", "rabbit", "orange",
    "planet", "yellow", "mountain", "river", "teacher", "kitchen", "bridge", "candle", "dolphin",
    "pumpkin", "umbrella", "jacket", "monkey", "tiger", "library", "rainbow", "zebra", "island",
    "octopus", "violin", "sandwich", "turtle", "balloon", "castle", "forest", "hammer", "lemon",
    "mirror", "number", "ocean", "pillow", "queen", "rocket", "sugar", "tomato", "village",
    "wizard", "xylophone", "yogurt", "zipper", "anchor", "butter", "cactus", "desert", "engine",
    "feather", "giraffe", "honey", "igloo", "jungle", "kettle", "ladder", "magnet", "needle",
    "onion", "parrot", "quilt", "saddle", "tunnel", "unicorn", "valley", "wallet", "basket",
    "cloud", "dragon", "eagle", "flower", "glove", "horse", "insect", "jelly", "koala", "lamp",
    "music", "nest", "owl", "piano", "rose", "snake", "train", "uncle", "vase", "whale", "cat",
    "sun", "dog", "tree", "book", "chair", "house", "water", "bread", "school", "friend",
]

# ---------------------------------------------------------------------------------------------
# Knowledge questions written out in full, each with one short answer, grouped by the format
# instruction they take.
# ---------------------------------------------------------------------------------------------

ONE_WORD_QUESTIONS = {
    "science": [
        "What is the chemical symbol for gold?", "What is the chemical symbol for oxygen?",
        "What gas do plants take in from the air to make food?",
        "What is the hardest natural substance?", "What is frozen water called?",
        "Which planet is known as the Red Planet?", "Which planet is the largest in our solar system?",
        "Which planet is closest to the Sun?", "What is water called when it turns into a hot gas?",
        "What part of the plant takes in water from the soil?",
        "What do we call an animal that eats only plants?", "What do we call an animal that eats only meat?",
        "Which organ do humans use to think?", "Which organ helps us breathe?",
        "What is the center of an atom called?", "What is the process by which plants make food from sunlight called?",
        "What type of energy comes from the Sun?", "Which metal is liquid at room temperature?",
        "What do bees collect from flowers?", "What is the largest organ of the human body?",
        "What do we call molten rock that comes out of a volcano?",
        "What is the name for a scientist who studies rocks?", "What is the name for a scientist who studies stars?",
        "What is the chemical symbol for iron?", "What is the closest star to Earth?",
        "Which gas makes up most of the air we breathe?", "What do you call a baby frog?",
        "What tool do scientists use to look at very small things?",
        "What do we call the path a planet takes around the Sun?",
        "What instrument measures temperature?", "Which blood cells carry oxygen?",
    ],
    "animals": [
        "What is a baby kangaroo called?", "What is a baby horse called?", "What is a baby goat called?",
        "What is a baby bear called?", "What is a baby duck called?", "What is a baby owl called?",
        "What is a group of wolves called?", "What is a group of fish called?",
        "What is a group of lions called?", "Which animal says quack?", "Which animal says neigh?",
        "Which animal says baa?", "Which animal barks?", "Which animal purrs?",
        "Which bird is a symbol of peace?", "Which animal is known for its black and white fur and eating bamboo?",
        "What is the tallest animal in the world?", "What is the largest animal on Earth?",
        "What is the fastest land animal?", "Which animal has a long neck and eats leaves from tall trees?",
        "Which insect makes honey?", "Which animal is known for changing color?",
        "Which animal sleeps hanging upside down?", "What do caterpillars turn into?",
        "Where does a bird live?", "What is the home of a bee called?", "What is the home of a spider called?",
        "What does a spider spin?", "Which bird cannot fly and lives in Antarctica?",
        "Which sea animal has eight arms?", "Which reptile has a hard shell and moves slowly?",
        "What do cows eat?", "What does a hen lay?", "Which animal carries its house on its back?",
    ],
    "food": [
        "Which fruit is yellow and curved?", "What is the main ingredient in guacamole?",
        "Which food is made from milk and often put on pizza?", "What do you call dried grapes?",
        "Which vegetable makes people cry when they cut it?", "What is the main ingredient in an omelette?",
        "What grain is used to make sushi?", "Which nut is used to make marzipan?",
        "What is the main ingredient in hummus?", "Which fruit is used to make wine?",
        "What do you call the Italian dish of flat dough with tomato and cheese on top?",
        "Which country is famous for sushi?", "What is tofu made from?", "Which fruit is used to make cider?",
        "What is the yellow part of an egg called?", "What drink is made from roasted beans?",
        "Which vegetable is orange and loved by rabbits?", "What is popcorn made from?",
        "Which spice gives curry a yellow color?", "What do you call bread that is toasted on both sides?",
        "What sweet brown food is made from cocoa beans?", "Which green fruit has brown fuzzy skin?",
        "Which red fruit is used to make ketchup?", "What is the main ingredient in french fries?",
    ],
    "colors": [
        "What color is the sky on a clear day?", "What color is a ripe tomato?", "What color is a carrot?",
        "What color is chocolate?", "What color do you get when you mix red and yellow?",
        "What color do you get when you mix red and blue?", "What color do you get when you mix black and white?",
        "What color is a flamingo?", "What color is the inside of a watermelon?",
        "What color is a polar bear's fur?", "What color is a stop sign?", "What color is an emerald?",
        "What color are most leaves in summer?", "What color is a school bus in the United States?",
        "What color is a crow?", "What color is a pumpkin?", "What color is a ruby?",
        "What color is the top light on a traffic light?", "What color is a cucumber on the outside?",
        "What color is a lime?", "What color is a blueberry?",
    ],
    "jobs": [
        "What do you call a person who fixes teeth?", "What do you call a person who puts out fires?",
        "What do you call a person who teaches children at school?", "What do you call a person who cuts hair?",
        "What do you call a person who repairs water pipes?", "What do you call a person who writes books?",
        "What do you call a person who designs buildings?", "What do you call a person who treats sick animals?",
        "What do you call a person who delivers letters?", "What do you call a person who cooks in a restaurant?",
        "What do you call a person who paints pictures?", "What do you call a person who plays the piano?",
        "What do you call a person who catches fish for a living?", "What do you call a person who travels into space?",
        "What do you call a person who helps sick people in a hospital and works with doctors?",
        "What do you call a person who sells flowers?", "What do you call a person who makes furniture from wood?",
        "What do you call a person who looks after books in a library?", "What do you call a person who acts in films?",
        "What do you call a person who guards a building at night?", "What do you call a person who takes photographs?",
        "What do you call a person who drives a taxi?", "What do you call a person who fixes cars?",
    ],
    "objects": [
        "What do you use to cut paper?", "What do you use to unlock a door?", "What do you use to brush your teeth?",
        "What do you use to tell the time?", "What do you use to keep dry in the rain?",
        "What do you sleep on at night?", "What do you use to eat soup?", "What do you use to write on a whiteboard?",
        "What do you use to dry yourself after a shower?", "What do you use to take a picture?",
        "What do you wear on your feet?", "What do you use to comb your hair?",
        "What appliance keeps food cold?", "What appliance washes dirty dishes?",
        "What do you use to boil water for tea?",
        "What do you use to sweep the floor?", "What do you use to see yourself?",
        "What do you wear on your head to keep warm?",
        "What do you put on a letter before you post it?", "What do you use to hit a nail?",
        "What do you use to open a can?", "What do you call the device that shows films and TV shows at home?",
        "What do you use to erase pencil marks?", "What object do you use to stick two pieces of paper together?",
    ],
    "time": [
        "Which day comes after Friday?", "Which day comes before Sunday?", "Which month comes after June?",
        "Which month comes before October?", "Which month is the last month of the year?",
        "Which season comes after summer?", "Which season comes before summer?",
        "Which month has the fewest days?", "What is the first day of the working week in most countries?",
        "Which month comes after August?", "Which month comes before March?", "Which day is two days after Tuesday?",
        "Which day is three days after Saturday?", "Which month is two months after April?",
        "In which season do leaves fall from trees?", "Which month is Halloween in?",
        "Which month is New Year's Day in?", "What do you call a period of ten years?",
        "What do you call a period of one hundred years?", "What do you call the meal eaten in the evening?",
    ],
    "everyday": [
        "What is the opposite side of heads on a coin?", "How do you say hello in Spanish?",
        "How do you say thank you in French?", "What is the plural of child?",
        "Which hand holds the fork in Europe, usually?",
        "What is the name of the toy bear named after a US president?",
        "What do you call a word that means the same as another word?",
        "What game is played with a king, a queen and pawns?", "What do you call a story told with pictures in boxes?",
        "What sport is played at Wimbledon?", "What is the name of the shape of a stop sign?",
        "Which card game is named after the number twenty-one?",
        "What do you call a flat round Italian bread with toppings?",
    ],
}

NUMBER_QUESTIONS = [
    "How many legs does an insect have?", "How many legs does a horse have?", "How many legs does a bird have?",
    "How many legs does an ant have?", "How many legs does a crab have?", "How many hearts does an octopus have?",
    "How many wings does a bee have?", "How many humps does a dromedary camel have?",
    "How many sides does a hexagon have?", "How many sides does an octagon have?", "How many corners does a cube have?",
    "How many faces does a cube have?", "How many sides does a rectangle have?", "How many edges does a cube have?",
    "How many days are in April?", "How many days are in December?", "How many days are in a leap year?",
    "How many days are in September?", "How many months have 31 days?", "How many hours are in two days?",
    "How many minutes are in half an hour?", "How many seconds are in an hour?", "How many days are in two weeks?",
    "How many years are in a century?", "How many years are in a decade?",
    "How many months are in a quarter of a year?",
    "How many players are on a basketball team on the court?",
    "How many players are on a volleyball team on the court?",
    "How many rings are on the Olympic flag?", "How many continents are there?", "How many oceans are there on Earth?",
    "How many keys does a standard piano have?", "How many squares are on a chessboard?",
    "How many cards are in a standard deck without jokers?", "How many bones are in the adult human body?",
    "How many teeth does an adult human usually have?", "How many toes does a person usually have?",
    "How many vowels are in the English alphabet?", "How many strings does a violin have?",
    "How many zeros are in one thousand?", "How many zeros are in one million?", "How many grams are in a kilogram?",
    "How many meters are in a kilometer?", "How many sides does a stop sign have?",
    "How many points is a touchdown worth in American football?", "How many holes are on a standard golf course?",
    "How many pieces does each player start with in chess?",
    "How many minutes are in a soccer match, not counting extra time?",
    "At what temperature in degrees Celsius does water boil at sea level?", "How many degrees are in a right angle?",
    "How many degrees are in a full circle?", "How many degrees do the angles of a triangle add up to?",
    "How many stripes are on the flag of the United States?", "How many stars are on the flag of the United States?",
    "How many sides does a dice have?", "How many babies are there in a set of twins?",
    "How many wheels does a unicycle have?", "How many legs does a stool usually have?",
]

YES_NO_FACTS = [
    "Is the Pacific the largest ocean?", "Do penguins live at the North Pole?", "Is a tomato a fruit in botany?",
    "Can ostriches fly?", "Is the Sun bigger than the Earth?", "Do plants need sunlight to grow?",
    "Is water made of hydrogen and oxygen?", "Is Mount Everest in Africa?", "Do spiders have six legs?",
    "Is a whale a fish?", "Do bats use echolocation?", "Is Tokyo in China?", "Is gold a metal?",
    "Does ice float on water?", "Is the Moon a planet?", "Can humans breathe underwater without equipment?",
    "Is a bat a bird?", "Do snakes have legs?", "Is Australia a continent?", "Does a week have eight days?",
    "Is zero an even number?", "Is a square a kind of rectangle?", "Do trees produce oxygen?",
    "Is a dolphin a mammal?", "Is the Amazon a river in South America?", "Can a kangaroo walk backwards easily?",
    "Is the Great Wall in China?", "Is a shark a mammal?", "Does the Earth go around the Sun?",
    "Are tomatoes blue when ripe?", "Do frogs lay eggs?", "Is lightning hot?", "Is a year longer than a month?",
    "Is February the shortest month?", "Is a kilometer longer than a mile?", "Is a cucumber a fruit in botany?",
    "Is Venus closer to the Sun than Mars is?", "Do owls usually hunt at night?", "Is honey made by ants?",
    "Is Antarctica covered in ice?", "Does sound travel faster than light?", "Is a spider an insect?",
    "Is glass made mainly from sand?", "Do koalas live in Australia?", "Is the heart a muscle?",
    "Can penguins swim?", "Is Paris in Germany?", "Is English written from left to right?",
    "Is the Nile in Africa?", "Is the Arctic at the South Pole?",
]

TRUE_FALSE_STATEMENTS = [
    "The Sun rises in the east.", "A triangle has four sides.", "Water boils at 100 degrees Celsius at sea level.",
    "Bees make milk.", "The Earth has one moon.", "Whales are mammals.", "Mars is called the Blue Planet.",
    "There are seven days in a week.", "A spider has eight legs.", "Fish breathe with lungs.",
    "The Atlantic Ocean is the largest ocean.", "Plants make food through photosynthesis.",
    "An octagon has eight sides.", "Diamonds are made of carbon.", "Sound travels faster than light.",
    "A leap year has 366 days.", "Penguins can fly.", "The heart pumps blood.", "Ice is colder than steam.",
    "Bats are blind and cannot see at all.", "Rome is the capital of Italy.", "The Moon makes its own light.",
    "A baby dog is called a kitten.", "Gold is heavier than the same volume of water.",
    "Mercury is the closest planet to the Sun.", "Humans have three lungs.", "Lemons are sour.",
    "The Amazon rainforest is in Africa.", "Snow is a form of frozen water.", "A century is 100 years.",
    "Camels store water in their humps.", "An hour has 60 minutes.", "Elephants are the largest land animals.",
    "The Pacific Ocean is smaller than the Arctic Ocean.", "Cats are a type of reptile.",
    "Oxygen is needed for fire to burn.", "Tomatoes grow underground.", "A square has four equal sides.",
    "The Great Pyramid is in Mexico.", "Copper conducts electricity.", "Rainbows have seven colors.",
    "Butterflies start life as caterpillars.", "Sugar dissolves in water.", "Jupiter is smaller than Earth.",
    "The freezing point of water is 0 degrees Celsius.", "Kangaroos live in Brazil.",
    "Shakespeare wrote Romeo and Juliet.", "Sharks are fish.", "Berlin is in Austria.",
    "A minute is longer than an hour.",
]

# Fill in the blank: sentence with ____ and a one-word answer.
FILL_BLANKS = [
    "The opposite of hot is ____.", "A group of cows is called a ____.", "We breathe in ____ to stay alive.",
    "Monday, Tuesday, ____, Thursday.", "January, February, ____, April.", "One, two, three, ____, five.",
    "Cats say meow and dogs say ____.", "The color of a clear sky is ____.", "Birds lay ____.",
    "A chair has four ____.", "Ice is frozen ____.", "We see with our ____.", "We hear with our ____.",
    "Spring, summer, autumn, ____.", "The Sun is a ____.", "Bread is baked in an ____.",
    "A person who teaches is a ____.", "Fish live in ____.", "Red, orange, yellow, green, ____.",
    "Twinkle, twinkle, little ____.", "An apple a day keeps the ____ away.", "The early bird catches the ____.",
    "Actions speak louder than ____.", "Practice makes ____.", "Better late than ____.",
    "Don't judge a book by its ____.", "A ____ is a baby dog.", "Rain falls from the ____.",
    "Water freezes at zero degrees ____.", "I brush my teeth with a ____.", "A week has seven ____.",
    "Ten, twenty, thirty, ____.", "Two, four, six, ____.", "The capital of France is ____.",
    "Cows give us ____.", "The ____ is the king of the jungle.", "We wear ____ on our feet.",
    "Snow is ____ and cold.", "A square has four ____.", "The Moon goes around the ____.",
]

# Items in increasing order of size / speed / duration / length; the generator compares items
# that are far enough apart in a list for the answer to be obvious.
SIZE_ORDER = [
    "an ant", "a mouse", "an apple", "a cat", "a child", "a horse", "a car", "an elephant",
    "a bus", "a blue whale", "a house", "a mountain", "the Moon", "the Earth", "the Sun",
]
SPEED_ORDER = ["a snail", "a turtle", "a person walking", "a bicycle", "a horse", "a car",
               "a passenger jet", "a rocket"]
TIME_ORDER = ["a second", "a minute", "an hour", "a day", "a week", "a month", "a year", "a decade",
              "a century"]
LENGTH_ORDER = ["a millimeter", "a centimeter", "an inch", "a foot", "a meter", "a kilometer", "a mile"]

# ---------------------------------------------------------------------------------------------
# Open-ended topics.
# ---------------------------------------------------------------------------------------------

CONCEPTS = [
    "photosynthesis", "gravity", "inflation", "democracy", "the water cycle", "evolution", "compound interest",
    "climate change", "the greenhouse effect", "supply and demand", "vaccination", "the immune system",
    "plate tectonics", "the food chain", "renewable energy", "electricity", "magnetism", "friction",
    "the scientific method", "machine learning", "a computer virus", "encryption", "the internet",
    "cloud computing", "a black hole", "the Big Bang", "DNA", "an ecosystem", "erosion", "a recession",
    "a budget", "a credit score", "interest rates", "recycling", "biodiversity", "the placebo effect",
    "opportunity cost", "the separation of powers", "the speed of light", "an atom", "a molecule",
    "the seasons on Earth", "tides", "a solar eclipse", "a lunar eclipse", "the ozone layer", "metabolism",
    "sleep cycles", "dehydration", "an allergy", "antibiotics", "a habit", "procrastination",
    "critical thinking", "active listening", "time management", "mindfulness", "empathy", "a metaphor",
    "irony", "a haiku", "the Renaissance", "the Industrial Revolution", "the Roman Empire", "the Silk Road",
    "globalization", "a free market", "taxes", "a stock", "a bond", "cryptocurrency", "a password manager",
    "two-factor authentication", "an operating system", "a database", "an algorithm", "a programming language",
    "open-source software", "artificial intelligence", "a neural network", "3D printing", "GPS",
    "a vaccine trial", "nutrition labels", "calories", "protein", "fiber in food", "caffeine", "composting",
    "fermentation", "condensation", "evaporation", "buoyancy", "static electricity", "sound waves",
    "a rainbow", "an earthquake", "a tsunami", "a hurricane", "a volcano", "a glacier", "a desert",
    "a coral reef", "bird migration", "hibernation", "pollination", "animal camouflage",
    "the circulatory system", "the nervous system", "digestion", "muscle memory", "a balanced diet",
    "a carbon footprint", "a smart grid", "an electric car battery", "a bill becoming a law",
    "freedom of speech", "a constitution", "the United Nations", "a census", "public transport",
    "urbanization", "a mortgage", "insurance", "a pension", "an emergency fund", "brainstorming",
    "a growth mindset", "peer review", "a hypothesis", "statistics", "probability", "an average",
    "percentages", "fractions", "prime numbers", "the Pythagorean theorem", "a variable in programming",
    "recursion", "a loop in programming", "version control", "a web browser", "cookies on websites",
]
# Concepts above that take a plural verb ("What are tides?").
PLURAL_CONCEPTS = [
    "the seasons on Earth", "tides", "interest rates", "taxes", "sleep cycles", "nutrition labels", "calories",
    "sound waves", "percentages", "fractions", "prime numbers", "cookies on websites", "antibiotics",
]

DEVICES = [
    "a refrigerator", "a microwave oven", "a thermostat", "a bicycle gear", "a solar panel", "a wind turbine",
    "a blood pressure monitor", "a touchscreen", "a smoke detector", "a compass", "an elevator", "a dishwasher",
    "a camera",
    "a light bulb", "an LED", "a battery", "a toaster", "a jet engine", "a parachute", "a submarine",
    "a hot air balloon", "a search engine", "a barcode scanner", "a contactless card reader", "a Wi-Fi router",
    "a Bluetooth speaker", "a mobile phone network", "noise-cancelling headphones", "an electric kettle",
    "a washing machine", "a vacuum cleaner", "a pressure cooker", "a telescope", "a microscope",
    "a thermometer", "an air conditioner", "a heat pump", "a hydroelectric dam", "a nuclear power plant",
    "a lock and key", "a zipper", "a pendulum clock", "a sewing machine", "a printer", "a QR code scanner",
    "an email server", "a spam filter", "a traffic light", "a seatbelt", "an airbag", "a disc brake",
    "a sailboat", "a helicopter", "a rocket", "a satellite", "a doorbell camera", "a fitness tracker",
    "a water filter", "a fire extinguisher", "an X-ray machine", "a hearing aid", "a piano",
]

WHY_QUESTIONS = [
    "Why is the sky blue?", "Why do leaves change color in autumn?", "Why do we have leap years?",
    "Why does bread go stale?", "Why do cats purr?", "Why do onions make people cry?", "Why is the ocean salty?",
    "Why do we yawn?", "Why do we dream?", "Why does ice float?", "Why do stars twinkle?",
    "Why do we get goosebumps?", "Why does metal feel colder than wood at the same temperature?",
    "Why do birds migrate?", "Why do some people get seasick?", "Why do our fingers wrinkle in water?",
    "Why do bubbles form in boiling water?", "Why do dogs wag their tails?", "Why does the Moon change shape?",
    "Why do we have time zones?", "Why do apples turn brown after being cut?", "Why is exercise good for the brain?",
    "Why do planes fly so high?", "Why do we need sleep?", "Why does popcorn pop?", "Why do we sneeze?",
    "Why is it hotter near the equator?", "Why do some animals hibernate?", "Why do people get hiccups?",
    "Why do paper cuts hurt so much?", "Why is saving money important?", "Why do prices go up over time?",
    "Why do we have different blood types?", "Why do zebras have stripes?", "Why do rivers flow to the sea?",
    "Why does thunder come after lightning?", "Why does soap remove grease?",
    "Why do some foods spoil faster than others?",
    "Why do we feel tired after a big meal?", "Why do mirrors flip left and right but not up and down?",
    "Why do ships float even though they are heavy?", "Why do we have fingernails?",
    "Why is reading good for children?",
    "Why do some plants grow toward light?", "Why do cities feel hotter than the countryside?",
    "Why do people learn languages more easily as children?", "Why does a balloon stick to a wall after you rub it?",
]

# Either order reads naturally ("the difference between X and Y").
COMPARE_PAIRS = [
    ("weather", "climate"), ("a virus", "bacteria"), ("a lake", "a pond"), ("a crocodile", "an alligator"),
    ("a frog", "a toad"), ("baking soda", "baking powder"), ("speed", "velocity"), ("mass", "weight"),
    ("a debit card", "a credit card"), ("saving", "investing"), ("RAM", "storage"), ("hardware", "software"),
    ("a Python list", "a Python tuple"), ("HTTP", "HTTPS"), ("a rabbit", "a hare"), ("a moth", "a butterfly"),
    ("a meteor", "a meteorite"), ("an ocean", "a sea"), ("a hurricane", "a tornado"), ("empathy", "sympathy"),
    ("affect", "effect"), ("a simile", "a metaphor"), ("fiction", "nonfiction"), ("a town", "a city"),
    ("tea", "coffee"), ("a laptop", "a tablet"), ("renting a home", "buying a home"), ("a fruit", "a vegetable"),
    ("an herbivore", "a carnivore"), ("a star", "a planet"), ("a dolphin", "a shark"), ("a cold", "the flu"),
    ("jogging", "sprinting"), ("a mountain", "a hill"), ("a democracy", "a monarchy"), ("a noun", "a verb"),
    ("an email", "a letter"), ("a diary", "a blog"), ("stocks", "bonds"), ("wool", "cotton"),
    ("butter", "margarine"), ("a museum", "a gallery"), ("a lion", "a tiger"), ("an apple", "a pear"),
    ("solar power", "wind power"), ("taking the train", "taking the bus"), ("reading a novel", "watching a film"),
    ("working from home", "working in an office"), ("a violin", "a cello"), ("a bakery", "a patisserie"),
]

ACTIVITIES = [
    "learn a new language", "start running", "save money each month", "sleep better", "study for an exam",
    "make new friends in a new city", "keep a plant alive indoors", "cook rice on the stove", "bake bread at home",
    "prepare for a job interview", "write a good cover letter", "give a short speech", "organize a small closet",
    "start a vegetable garden", "clean a laptop keyboard", "change a flat bicycle tire", "learn to swim as an adult",
    "plan a birthday party", "pack for a weekend trip", "reduce screen time", "start meditating", "drink more water",
    "write a thank-you note", "train a puppy to sit", "make a budget", "learn to play the guitar", "brew good coffee",
    "stay focused while working from home", "keep a journal", "read more books", "get up earlier",
    "make a simple salad dressing", "hang a picture on a wall", "wash wool sweaters", "remove a coffee stain",
    "take better photos with a phone", "back up files on a computer", "choose a strong password",
    "prepare for a long flight", "stay safe on a hike", "help a friend who is stressed", "learn to draw",
    "improve handwriting", "memorize a poem", "reduce food waste", "cut down on sugar", "walk more every day",
    "set up a small fish tank", "care for a cat", "teach a child to ride a bike", "make a paper airplane",
    "boil an egg", "make pancakes", "sharpen a kitchen knife", "fold a fitted sheet", "paint a room",
    "write a short story", "start a podcast", "ask for a raise", "handle a difficult conversation",
    "prepare for a storm", "learn touch typing", "keep houseplants free of pests", "pick a ripe avocado",
    "stay warm in winter without high bills", "make a to-do list that works", "learn basic first aid",
    "clean a cast iron pan", "grow herbs on a windowsill", "plan meals for a week", "volunteer in my community",
]

LIST_TOPICS = [
    "fruits that are high in vitamin C", "indoor hobbies for a rainy day", "ways to save energy at home",
    "healthy breakfast ideas", "games to play with kids on a road trip", "animals that live in the Arctic",
    "famous landmarks in Europe", "good habits for students", "things to pack for a beach day",
    "vegetables that grow well in pots", "ways to be kind to a neighbor", "questions to ask at a job interview",
    "easy dinners for busy weeknights", "skills every adult should learn", "birds you can see in a city park",
    "uses for an old jar", "ideas for a picnic", "ways to relax after work", "features of a good website",
    "words that rhyme with light", "sources of protein for vegetarians", "ways to stay cool in summer",
    "board games for families", "signs that a plant needs more water", "things to do in a small town",
    "benefits of walking", "safety rules for the kitchen", "ways to reduce plastic use",
    "reasons to learn history", "tips for a first-time camper", "ideas for a science fair project",
    "snacks that are good for hiking", "jobs that involve working with animals", "musical instruments for beginners",
    "ways to practice gratitude", "types of clouds", "inventions that changed the world",
    "things that make a good team leader", "ways to keep a conversation going", "common kitchen herbs",
]

POEM_TOPICS = [
    "the ocean", "a rainy morning", "autumn leaves", "a cat sleeping in the sun", "the night sky", "friendship",
    "a city at dawn", "a lost umbrella", "the first snow", "a cup of tea", "an old tree", "a mountain lake",
    "the moon", "a busy train station", "spring flowers", "a grandmother's kitchen", "a lighthouse",
    "a summer thunderstorm", "a walk in the woods", "a small boat", "the smell of bread", "a library",
    "a bicycle ride", "a quiet Sunday", "a firefly", "the desert at night", "a garden in June", "the wind",
    "homework", "a dog waiting at the door", "the last day of school", "a candle", "a river", "coffee",
]

STORY_PROMPTS = [
    "a robot who learns to paint", "a girl who finds a map in her attic", "a dragon who is afraid of fire",
    "a lost puppy finding its way home", "a baker whose bread can talk", "two friends stuck in an elevator",
    "a snowman who wants to see summer", "a boy who can speak to birds", "a lighthouse keeper and a storm",
    "a cat who becomes mayor of a small town", "a time traveler who arrives one day too late",
    "a shy student on the first day of school", "a penguin who wants to fly", "a magic pencil",
    "an old man who plants a tree every year", "a message in a bottle", "a train that never stops",
    "a squirrel planning a heist", "a kid who wins a lifetime supply of soup", "a forgotten toy in a park",
    "a chef cooking for a picky king", "a door that appears in the middle of a field", "a clock that runs backwards",
    "a fisherman who catches a star", "a library book that is twenty years overdue",
]

EMAIL_SCENARIOS = [
    "asking my manager for a day off next Friday", "thanking a colleague for helping with a project",
    "inviting neighbors to a small garden party", "asking a teacher for an extension on an essay",
    "following up after a job interview", "telling a client that a delivery will arrive two days late",
    "asking a landlord to fix a broken heater", "declining a meeting invitation politely",
    "welcoming a new team member", "reminding a friend about money they borrowed",
    "requesting a refund for a damaged product", "introducing myself to a new project team",
    "asking a professor for a recommendation letter", "cancelling a dentist appointment",
    "congratulating a friend on a new job", "asking a hotel about early check-in",
    "sharing meeting notes with the team", "apologizing for missing a deadline",
    "asking a coworker to swap shifts", "inviting a speaker to a school event",
    "telling a customer their order has shipped", "asking a neighbor to keep the noise down at night",
]

BUSINESSES = [
    "a bakery", "a bike repair shop", "a dog grooming salon", "a coffee cart", "a yoga studio",
    "a bookshop", "a vegan restaurant", "a plant nursery", "a cleaning service", "a math tutoring service",
    "a car wash", "a local farmers market", "an ice cream shop", "a recycling program", "a library reading club",
    "a language school", "a moving company", "a pizza delivery service", "a children's museum", "a hiking club",
    "a reusable water bottle", "a solar lamp", "a running shoe", "a budgeting app", "a toothpaste for kids",
]

PROFESSIONS = [
    "nurse", "electrician", "architect", "librarian", "pilot", "chef", "firefighter", "dentist", "farmer",
    "software engineer", "teacher", "veterinarian", "journalist", "accountant", "plumber", "pharmacist",
    "photographer", "carpenter", "lawyer", "translator", "park ranger", "marine biologist", "paramedic",
    "graphic designer", "police officer", "baker", "data analyst", "zookeeper", "air traffic controller",
    "social worker", "museum curator", "meteorologist", "physiotherapist", "mechanic", "astronaut",
]

PLACES = [
    "Paris", "Tokyo", "New York", "the Sahara Desert", "the Amazon rainforest", "Iceland", "Venice", "Kyoto",
    "the Great Barrier Reef", "the Grand Canyon", "Cairo", "Rio de Janeiro", "Istanbul", "Switzerland",
    "Antarctica", "Barcelona", "Machu Picchu", "Nepal", "Mexico City", "Cape Town", "Vienna",
    "Marrakech", "Sydney", "Prague", "Yellowstone National Park", "the Dead Sea", "Lisbon", "Seoul",
    "Amsterdam", "Bangkok", "Edinburgh", "Athens", "Hawaii", "Bergen", "the Isle of Skye",
]

DISHES = [
    "pizza", "sushi", "pasta carbonara", "pancakes", "tacos", "curry", "paella", "hummus", "ramen",
    "a Greek salad", "lasagna", "fried rice", "guacamole", "tomato soup", "banana bread", "omelette",
    "falafel", "risotto", "dumplings", "apple pie", "porridge", "lentil soup", "chili", "bread",
    "yogurt", "cheese", "chocolate", "pesto", "miso soup", "pad thai", "couscous", "shakshuka",
]

# ---------------------------------------------------------------------------------------------
# Sentences and passages for rewriting, grammar fixes, summaries and translation.
# ---------------------------------------------------------------------------------------------

GRAMMAR_ERRORS = [
    "She don't like coffee in the morning.", "Me and him went to the store yesterday.",
    "There is three apples on the table.", "I seen that movie last week.", "He go to school by bus every day.",
    "Their going to the park after lunch.", "The dog wagged it's tail.", "I have less friends than my brother.",
    "We was late for the meeting.", "She can sings very well.", "Your the best teacher I ever had.",
    "He runned all the way home.", "The children is playing outside.", "I didn't do nothing wrong.",
    "Who's book is this?", "She is more taller than her sister.", "I am agree with you.",
    "They has finished their homework.", "Each of the students have a pencil.", "I goed to the beach on Sunday.",
    "The informations you sent were helpful.", "He don't know the answer.", "Can you borrow me your pen?",
    "I am living here since 2015.", "She told to me a secret.", "The weather are nice today.",
    "Him and his friends plays soccer.", "I should of called you earlier.", "Lets go to the cinema tonight.",
    "The team are winning there games.", "I buyed a new phone last month.", "Everyone have their own opinion.",
    "This is the most easiest question.", "My sister and me is going shopping.", "He speak English very good.",
    "The books on the shelf is old.", "We didn't went to the party.", "Its raining outside, so take a umbrella.",
]

PLAIN_SENTENCES = [
    "The meeting has been moved to Thursday afternoon.", "I can't come to the party because I am sick.",
    "Please send me the report by the end of the day.", "The new café on the corner sells great cakes.",
    "Our train was delayed for two hours because of the snow.", "The kids built a huge sandcastle at the beach.",
    "I think we should try a different approach to this problem.", "The museum is closed on Mondays.",
    "He forgot his keys and had to wait outside for an hour.", "We need more volunteers for the charity run.",
    "The price of the tickets went up again this year.", "My phone battery dies very quickly.",
    "The committee approved the new budget after a long discussion.", "She finished the marathon in four hours.",
    "The restaurant was noisy, but the food was excellent.",
    "I would like to return this jacket because it is too small.",
    "The library will host a reading club every Wednesday.", "Our company is looking for a new office manager.",
    "The storm knocked down several trees in the park.", "Thank you for your help with the move last weekend.",
    "The software update fixed the login problem.", "We will announce the winners at noon.",
]

PASSAGES = [
    "Honeybees live in colonies of thousands. Each colony has one queen, who lays the eggs, and many worker bees, "
    "who collect nectar, build the comb and protect the hive. Bees also pollinate many crops, which makes them "
    "important for farming.",
    "The town library started lending tools last spring. People can now borrow drills, ladders and garden tools "
    "for up to a week. The program has been so popular that the library plans to add sewing machines next year.",
    "Sleep helps the body repair itself and the brain store memories. Adults usually need seven to nine hours a "
    "night. Too little sleep can make it harder to focus and can weaken the immune system.",
    "The Great Wall of China was built over many centuries to protect against invasions. It is not one single wall "
    "but a series of walls and towers. Today it is one of the most visited sites in the world.",
    "Maria opened a small bakery in her neighborhood. At first only a few people came, but word spread about her "
    "cinnamon rolls. Within a year she had a line outside every Saturday morning and hired two helpers.",
    "Recycling turns used materials into new products. Paper, glass, metal and some plastics can be recycled. "
    "Recycling saves energy and reduces the amount of waste that ends up in landfills.",
    "Octopuses are clever animals. They can open jars, solve simple puzzles and change the color of their skin "
    "to hide. Each arm can taste and touch, and an octopus has three hearts.",
    "The city council voted to close the main street to cars on Sundays. Supporters say it will make the center "
    "safer and bring more people to local shops. Some drivers worry about traffic on nearby roads.",
    "Volcanoes form where melted rock from deep inside the Earth rises to the surface. When pressure builds up, "
    "the volcano can erupt, sending out lava, ash and gas. Volcanic soil is often very fertile.",
    "Tom wanted to learn the piano as an adult. He practiced for fifteen minutes every evening. After six months "
    "he could play a few simple songs, and he found that the daily practice also helped him relax.",
    "Coffee was first grown in Ethiopia and later in Yemen. From there it spread to Europe and the rest of the "
    "world. Today it is one of the most traded farm products on the planet.",
    "Our school garden grows tomatoes, beans and herbs. Students water the plants before class and learn how "
    "seeds grow. In autumn the harvest is used in the school kitchen.",
    "Solar panels turn sunlight into electricity. They work best in sunny places, but they still produce power on "
    "cloudy days. Many homes now use them to lower their energy bills.",
    "The museum's new exhibit shows toys from the last hundred years. Visitors can see wooden trains, tin robots "
    "and early video games. Children are allowed to play with copies of some of the toys.",
    "Camels are well suited to desert life. They can go many days without drinking, and their wide feet help them "
    "walk on sand. Their humps store fat, which gives them energy when food is scarce.",
    "A local team of volunteers cleaned the river last weekend. They collected more than two hundred bags of "
    "rubbish, including old tires and bottles. The group plans to meet again next month.",
    "Many people start the new year with big goals, but most give up within weeks. Experts suggest starting "
    "with small, specific steps and tracking progress, which makes new habits easier to keep.",
    "The first bicycles had no pedals; riders pushed along the ground with their feet. Pedals, chains and air-filled "
    "tires came later. Today bicycles are one of the most common ways to travel in many cities.",
]

TRANSLATION_SENTENCES = [
    "Where is the train station?", "I would like a cup of tea, please.", "The weather is beautiful today.",
    "My brother lives in a small town.", "How much does this cost?", "I am learning to cook.",
    "We are going to the museum tomorrow.", "The children are playing in the garden.", "Can you help me, please?",
    "I like reading books in the evening.", "The shop opens at nine o'clock.", "What time is it?",
    "My favorite color is green.", "She has two cats and a dog.", "It is raining, so take an umbrella.",
    "I am very happy to meet you.", "The food in this restaurant is delicious.", "Do you speak English?",
    "We need to buy bread and milk.", "The book is on the table.", "I will call you tomorrow.",
    "This is my first time in this city.", "The bus is late again.", "Happy birthday, my friend!",
    "I forgot my keys at home.", "The library is next to the school.", "Please close the window.",
]

LANGUAGES = ["Spanish", "French", "German", "Italian", "Portuguese", "Dutch"]

# ---------------------------------------------------------------------------------------------
# Programming, advice and definitions.
# ---------------------------------------------------------------------------------------------

PYTHON_TASKS = [
    "reverses a string", "checks whether a number is prime", "counts the vowels in a string",
    "returns the largest number in a list", "removes duplicates from a list while keeping order",
    "checks whether a word is a palindrome", "converts Celsius to Fahrenheit", "computes the factorial of a number",
    "returns the first n Fibonacci numbers", "counts how often each word appears in a sentence",
    "merges two dictionaries", "sorts a list of names alphabetically", "finds the average of a list of numbers",
    "reads a text file and counts its lines", "flattens a list of lists", "capitalizes the first letter of each word",
    "returns the even numbers from a list", "checks whether two strings are anagrams", "sums the digits of an integer",
    "converts a list of strings to integers", "finds the second largest number in a list",
    "returns today's date as a string", "generates a random password of a given length",
    "swaps the keys and values of a dictionary", "checks whether a year is a leap year",
]

PYTHON_QUESTIONS = [
    "What is the difference between a list and a dictionary in Python?", "How do I read a CSV file in Python?",
    "What does the 'self' parameter mean in a Python class?", "How do I install a package with pip?",
    "What is a list comprehension in Python? Give an example.", "How do I handle an exception in Python?",
    "What does 'if __name__ == \"__main__\":' do in Python?", "How do I write a for loop over a dictionary in Python?",
    "What is the difference between '==' and 'is' in Python?", "How do I create a virtual environment in Python?",
    "What is a lambda function in Python?", "How do I format a number with two decimal places in Python?",
    "How do I split a string into words in Python?", "What does the 'return' statement do in a Python function?",
    "How do I open and write to a file in Python?", "What is the difference between a tuple and a list?",
]

SHELL_TASKS = [
    "list all files in a folder, including hidden ones", "find all files ending in .txt in a folder",
    "count the lines in a file", "show the last 20 lines of a log file", "copy a folder and everything in it",
    "rename a file", "see how much disk space is free", "search for a word inside many files",
    "create a compressed tar archive of a folder", "check which process is using the most memory",
    "make a script executable", "show the current working directory", "download a file from a URL",
    "delete an empty folder", "see the size of a folder", "print the first 10 lines of a file",
]

ADVICE_SITUATIONS = [
    "I just moved to a new city and don't know anyone", "I keep procrastinating on a big assignment",
    "my roommate never does the dishes", "I feel nervous before every presentation",
    "I want to change careers but I'm worried about money", "my friend forgot my birthday and I feel hurt",
    "I have trouble falling asleep at night", "I spend too much money on takeout food",
    "I have two job offers and can't decide", "my neighbor's dog barks all night",
    "I want to get fit but I have little time", "I made a mistake at work and my boss noticed",
    "I feel overwhelmed by emails", "my child doesn't want to read", "I want to ask someone on a date",
    "I'm starting university next month", "I lost touch with an old friend and want to reconnect",
    "I get distracted by my phone while studying", "my team at work doesn't communicate well",
    "I want to start saving for a holiday", "I'm visiting a country where I don't speak the language",
    "I have a long flight next week and get bored easily", "my houseplants keep dying",
]

DEFINITION_WORDS = [
    "ephemeral", "resilient", "ubiquitous", "meticulous", "candid", "nostalgia", "serendipity", "ambiguous",
    "benevolent", "frugal", "gregarious", "pragmatic", "tenacious", "eloquent", "diligent", "empathy",
    "hypothesis", "metaphor", "irony", "paradox", "sustainable", "procrastinate", "collaborate", "innovate",
    "mitigate", "inevitable", "versatile", "vivid", "whimsical", "zealous", "curious", "humble", "lenient",
    "obsolete", "plausible", "reluctant", "spontaneous", "transparent", "verbose", "wary", "altruism",
    "anecdote", "catalyst", "dilemma", "etiquette", "facade", "hierarchy", "jargon", "momentum", "nuance",
]

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
