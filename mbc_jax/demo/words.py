"""The demo suite's hand-written English: the word lists its generators draw from (a list per kind of word).

Fixed data, not drawn from any seed: changing a list changes every generated suite.
"""

ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
          "gr", "kr", "st", "th", "tr", "sh")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
CODAS = ("", "", "n", "r", "l", "s", "k", "m", "th", "nd")

NOUNS = ("lantern", "basket", "bridge", "garden", "river", "mountain", "tower", "market", "harbor",
         "forest", "meadow", "village", "castle", "kettle", "blanket", "ladder", "window", "mirror",
         "compass", "drum", "flute", "boat", "wagon", "letter", "map", "key", "coin", "candle",
         "rope", "stone", "feather", "shell", "cloak", "boot", "hat", "cup", "bowl", "table",
         "chair", "door", "roof", "field", "valley", "island", "lake", "cave", "road", "well",
         "mill", "clock", "book", "song", "storm", "cloud", "star", "moon", "fire", "wheel",
         "bell", "sail")
ADJECTIVES = ("quiet", "bright", "old", "tiny", "huge", "golden", "silver", "gentle", "brave",
              "clever", "lazy", "curious", "ancient", "cold", "warm", "hidden", "broken", "shiny",
              "dusty", "soft", "loud", "strange", "lucky", "proud", "sleepy", "hungry", "wild",
              "calm", "tall", "narrow", "wide", "heavy", "empty", "green", "blue", "red", "purple",
              "young", "secret", "patient", "restless", "foggy", "crooked", "humble", "fierce")
VERBS = ("found", "lost", "carried", "painted", "built", "followed", "chased", "repaired",
         "borrowed", "opened", "hid", "visited", "discovered", "sold", "bought", "planted",
         "crossed", "climbed", "watched", "remembered", "forgot", "guarded", "cleaned", "traded",
         "sketched", "counted", "named", "fed", "woke", "answered")
JOBS = ("baker", "potter", "sailor", "weaver", "farmer", "teacher", "miner", "singer", "painter",
        "tailor", "healer", "merchant", "fisher", "carpenter", "scribe", "gardener", "smith",
        "guard", "cook", "clockmaker", "beekeeper", "glassblower")
GOODS = ("salt", "wool", "copper", "glass", "timber", "silk", "honey", "tea", "iron", "pottery",
         "paper", "rice", "cheese", "spices", "amber", "leather", "rope", "dye")
SHOPS = ("bakery", "tea shop", "bookshop", "inn", "bicycle shop", "flower stall", "tailor shop",
         "music school", "bathhouse", "toy shop", "library", "garden center")
FEELINGS = ("happy", "worried", "surprised", "tired", "hopeful", "lonely", "proud", "nervous",
            "cheerful", "confused", "grateful", "angry")
TIMES = ("One morning", "At dawn", "Late at night", "In the spring", "After the storm",
         "On a rainy day", "Long ago", "Every winter", "Just before sunset", "On market day",
         "In the middle of summer", "When the bells rang")
PLACES = ("the harbor", "the old mill", "the market square", "the forest path", "the river bank",
          "the top of the hill", "a crowded inn", "the castle gate", "a quiet garden", "the bridge")
# sentiment words: (for things, for people), positive and negative
POS_WORDS = ("wonderful", "delicious", "clean", "cozy", "excellent", "fresh", "pleasant", "lovely")
POS_STAFF = ("friendly", "helpful", "cheerful", "generous", "kind", "patient")
NEG_WORDS = ("awful", "bland", "dirty", "cramped", "terrible", "stale", "unpleasant", "noisy")
NEG_STAFF = ("rude", "careless", "gloomy", "greedy", "slow", "unfriendly")
WINTERS = ("long", "harsh", "bitter", "dark", "windy", "wet")
REVIEW_SUBJECTS = ("soup", "bread", "tea", "room", "service", "music", "view", "garden", "stew",
                   "pastry", "bath", "lesson")
REVIEW_STAFF = ("staff", "owners", "cooks", "guides", "musicians", "hosts")
ATTRIBUTES = ("capital", "language", "currency", "animal", "plant", "founded", "export")
