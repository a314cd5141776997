"""The closed word lists and dependency labels the caption rules read (vtr.extract.parse_rules).

Lemmas, lower case. Closed lists because WordNet is not available. Changing one changes parses: bump
PARSER_VERSION (vtr.extract.parse_rules).
"""
from __future__ import annotations

FRAME_VERBS = frozenset({"see", "show", "depict", "feature", "display", "present", "film", "record"})
# not "cut" or "switch": "cutting the eggs into parts", "switches the book to her other hand" are actions
NARRATIVE_VERBS = frozenset({"lead", "transition", "fade", "follow", "end"})
PRONOUN_LIKE = frozenset({"other", "another", "one", "each", "both", "s"})  # "s": "it s" in no-punct text
ASPECT_VERBS = frozenset({"start", "begin", "continue", "proceed", "keep", "try", "attempt", "go", "seem",
                          "appear", "want", "resume", "get", "manage", "finish"})
VIEWER_SUBJECTS = frozenset({"you", "we", "i", "one", "viewer", "camera"})
DIRECTION_WORDS = frozenset({
    "left", "right", "up", "down", "upward", "upwards", "downward", "downwards", "leftward", "leftwards",
    "rightward", "rightwards", "forward", "forwards", "backward", "backwards", "back", "away", "around",
    "sideways", "still", "across", "over", "along", "off", "out", "together", "apart", "in", "inside",
    "outside", "home", "upstairs", "downstairs", "straight", "clockwise", "counterclockwise",
})
DIRECTION_NOUNS = frozenset({"left", "right", "top", "bottom", "center", "centre", "middle", "distance",
                             "side", "camera", "frame", "view"})
MANNER_NOUNS = frozenset({"place", "size", "circle", "direction", "motion", "slow", "speed", "unison",
                          "way", "manner", "pace", "tandem", "half", "piece", "order", "line", "turn"})
TIME_NOUNS = frozenset({"end", "beginning", "start", "time", "moment", "while", "second", "minute",
                        "first", "last", "rest", "meantime", "process"})
FRAME_NOUNS = frozenset({"video", "clip", "footage", "film", "movie", "picture", "image", "photo", "view",
                         "shot", "scene", "montage", "compilation", "slideshow", "animation", "cartoon",
                         "recording", "demonstration", "tutorial", "close", "closeup"})
QUANTITY_NOUNS = frozenset({"group", "lot", "lots", "couple", "bunch", "number", "pair", "team", "crowd",
                            "kind", "type", "sort", "variety", "series", "set", "handful", "few",
                            "several", "some", "many", "all", "both", "one", "two", "three", "each",
                            "most", "rest", "amount", "plenty", "line", "row", "pile", "stack"})
RELATIONAL_NOUNS = frozenset({"front", "top", "side", "middle", "edge", "back", "bottom", "center",
                              "centre", "corner", "surface", "inside", "outside", "part", "end", "rear",
                              "interior", "exterior", "base", "foot", "bank", "shore", "area", "rest"})
LOCATIVE_PREPS = frozenset({
    "in", "on", "at", "inside", "outside", "under", "underneath", "beneath", "near", "by", "across", "over",
    "along", "through", "into", "onto", "behind", "above", "below", "around", "beside", "between", "among",
    "against", "within", "throughout", "atop", "upon", "past", "toward", "towards", "to", "from", "off",
    "down", "up", "outdoors", "amid", "during", "before", "beyond", "alongside",
})
TIME_PREPS = frozenset({"at", "in", "during", "by", "through", "under", "throughout", "against", "into"})
TIME_OF_DAY = frozenset({"night", "day", "daytime", "nighttime", "morning", "afternoon", "evening",
                         "sunset", "sunrise", "dusk", "dawn", "twilight", "midnight", "noon", "daylight",
                         "moonlight", "sunlight", "dark", "darkness"})
SCENE_NOUNS = frozenset({
    # rooms and buildings
    "kitchen", "room", "bedroom", "bathroom", "classroom", "office", "studio", "gym", "gymnasium", "hall",
    "hallway", "corridor", "lobby", "house", "home", "apartment", "building", "church", "school", "college",
    "restaurant", "bar", "cafe", "pub", "store", "shop", "mall", "market", "supermarket", "library",
    "hospital", "garage", "basement", "attic", "barn", "stable", "warehouse", "factory", "arena", "stadium",
    "theater", "theatre", "auditorium", "stage", "ring", "court", "rink", "track", "pool", "salon", "bakery",
    "zoo", "aquarium", "museum", "hotel", "set", "laboratory", "lab", "workshop", "cage", "tent",
    "indoors", "outdoors", "inside", "outside", "shower", "bathtub", "tub", "elevator", "staircase",
    "stairs", "balcony", "porch", "patio", "deck", "roof", "rooftop", "showroom", "dealership", "city",
    # outdoors and nature
    "yard", "backyard", "garden", "park", "playground", "lot", "driveway", "sidewalk", "street", "road",
    "highway", "freeway", "alley", "lane", "path", "trail", "bridge", "tunnel", "station", "airport",
    "town", "village", "neighborhood", "neighbourhood", "downtown", "countryside", "camp", "campsite",
    "cave", "beach", "shore", "coast", "ocean", "sea", "lake", "river", "stream", "creek", "pond",
    "waterfall", "water", "wave", "surf", "sand", "desert", "dune", "snow", "ice", "mountain", "hill",
    "hillside", "slope", "cliff", "forest", "wood", "woods", "jungle", "meadow", "grass", "lawn", "field",
    "prairie", "valley", "canyon", "island", "sky", "cloud", "air", "space", "nature", "wilderness",
    "outdoor", "farm", "ranch", "orchard", "vineyard", "course", "pitch",
    "landscape", "scenery", "runway", "catwalk", "dock", "pier", "harbor", "harbour", "port", "marina",
    "terrain", "mud", "dirt", "rain", "sun", "shade", "fog", "underwater",
    "sunshine", "asphalt", "pavement", "surface", "ground", "floor", "background", "backdrop", "wall",
    "area", "place", "location", "world", "country", "crowd", "audience",
    # vehicles as places, and events as settings
    "car", "bus", "train", "boat", "ship", "plane", "airplane", "vehicle", "truck", "subway", "taxi",
    "party", "wedding", "concert", "festival", "parade", "ceremony", "show", "event", "competition",
    "tournament", "game", "match", "race", "news", "television", "tv",
})

# Dependency labels.
CLAUSE_DEPS = frozenset({"ROOT", "conj", "xcomp", "ccomp", "advcl", "acl", "relcl", "pcomp", "csubj",
                         "csubjpass", "parataxis", "dep"})
NOMINAL_DEPS = frozenset({"nsubj", "nsubjpass", "dobj", "pobj", "attr", "dative", "appos", "oprd"})
ARGUMENT_DEPS = frozenset({"nsubj", "nsubjpass", "dobj", "dative", "csubj"})
NP_LEFT_DEPS = frozenset({"det", "amod", "compound", "nummod", "poss", "nmod", "npadvmod", "advmod",
                          "quantmod", "predet", "case", "hmod", "cc"})
NOUN_POS = frozenset({"NOUN", "PROPN"})
