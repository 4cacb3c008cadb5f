"""Language identification and fidelity."""

from __future__ import annotations

import pytest

from train.eval import detect_language, language_fidelity

SAMPLES = {
    "en": "the weather is nice today and we are going to the park",
    "de": "das Wetter ist heute schön und wir gehen in den Park",
    "fr": "il fait beau aujourd'hui et nous allons au parc",
    "es": "hoy hace buen tiempo y vamos al parque",
    "it": "oggi il tempo è bello e andiamo al parco",
    "pl": "dzisiaj jest ładna pogoda i idziemy do parku",
    "cs": "dnes je hezké počasí a jdeme do parku",
    "sk": "dnes je pekné počasie a ideme do parku",
    "nl": "het weer is vandaag mooi en we gaan naar het park",
    "fi": "tänään on kaunis sää ja menemme puistoon",
    "et": "täna on ilus ilm ja me läheme parki",
    "hu": "ma szép idő van és elmegyünk a parkba",
    "ro": "astăzi vremea este frumoasă și mergem în parc",
    "hr": "danas je lijepo vrijeme i idemo u park",
    "sl": "danes je lepo vreme in gremo v park",
    "lt": "šiandien graži diena ir mes einame į parką",
    "zh": "今天天气很好，我们去公园",
    "ja": "今日はいい天気なので公園に行きます",
    "ko": "오늘은 날씨가 좋아서 공원에 갑니다",
}


@pytest.mark.parametrize("code", sorted(SAMPLES))
def test_each_dev_language_is_recognised(code):
    assert detect_language(SAMPLES[code]) == code


def test_no_letters_no_language():
    assert detect_language("") is None and detect_language("123 !?") is None


def test_fidelity_counts_translations_against_the_run():
    hyps = [SAMPLES["de"], SAMPLES["en"], "", SAMPLES["de"], SAMPLES["de"]]
    out = language_fidelity(hyps, "de")
    assert out == {"fidelity": 0.75, "counted": 4, "empty": 1, "detected": {"de": 3, "en": 1}}
