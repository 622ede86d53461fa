"""Each metric on worked examples scored by hand from its published definition."""

from __future__ import annotations

import pytest

from nvlm_train.evaluation.benchmark_names import Benchmark
from nvlm_train.evaluation.metrics.anls import anls, levenshtein
from nvlm_train.evaluation.metrics.choice import parse_choice
from nvlm_train.evaluation.metrics.gsm8k import final_number, gold_answer, gsm8k_accuracy
from nvlm_train.evaluation.metrics.math_answer import is_equiv, last_boxed, math_accuracy
from nvlm_train.evaluation.metrics.mathvista import Extraction, MathVistaQuestion, mathvista_score
from nvlm_train.evaluation.metrics.mmmu import mmmu_open_accuracy
from nvlm_train.evaluation.metrics.ocrbench import ocrbench_correct
from nvlm_train.evaluation.metrics.relaxed import relaxed_accuracy
from nvlm_train.evaluation.metrics.vqa import normalize_vqa_answer, vqa_accuracy
from nvlm_train.evaluation.scoring import aggregate


def test_vqa_normalisation_punctuation_digits_articles_contractions():
    assert normalize_vqa_answer("Two dogs!") == "2 dogs"
    assert normalize_vqa_answer("The cat.") == "cat"
    assert normalize_vqa_answer("an apple") == "apple"
    assert normalize_vqa_answer("dont") == "don't"
    assert normalize_vqa_answer("1,000") == "1000"  # a 1,000-style comma: punctuation dropped
    assert normalize_vqa_answer("3.5") == "3.5"  # a period inside a number stays
    assert normalize_vqa_answer("black/white") == "black white"  # no space next to it: becomes a space
    assert normalize_vqa_answer("yes\n") == "yes"


def test_vqa_accuracy_is_the_mean_over_the_ten_leave_one_out_subsets():
    # 2 of 10 annotators said "2": leaving out one of those two leaves 1 match (1/3), leaving out one
    # of the other eight leaves 2 matches (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 18/30 = 0.6.
    gts = ["2", "two"] + ["3"] * 8
    assert vqa_accuracy("2", gts) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    # 3 matches: leaving one of them out leaves 2 (2/3), else 3 (1): (3 * 2/3 + 7 * 1) / 10 = 0.9.
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    # 4 or more matches: every subset keeps >= 3: 1.0.
    assert vqa_accuracy("The Cat", ["cat"] * 4 + ["dog"] * 6) == 1.0
    assert vqa_accuracy("bird", ["cat"] * 10) == 0.0


def test_anls_threshold_and_edge_cases():
    assert levenshtein("kitten", "sitting") == 3
    assert anls("Hello", ["hello "]) == 1.0  # case and surrounding space ignored
    # one edit in 10 characters: NL = 0.1, score 0.9
    assert anls("abcdefghij", ["abcdefghiX"]) == pytest.approx(0.9)
    # NL exactly 0.5 is not below the threshold: 0
    assert anls("abcd", ["abXY"]) == 0.0
    # NL = 2/5 = 0.4 < 0.5: 0.6
    assert anls("abcde", ["abcXY"]) == pytest.approx(0.6)
    # the best of several ground truths counts
    assert anls("2019", ["twenty nineteen", "2019"]) == 1.0
    assert anls("", [""]) == 1.0 and anls("", ["abc"]) == 0.0 and anls("x", []) == 0.0


def test_chartqa_relaxed_accuracy_at_the_five_percent_boundary():
    assert relaxed_accuracy("105", ["100"]) == 1.0  # exactly 5%: correct
    assert relaxed_accuracy("95", ["100"]) == 1.0
    assert relaxed_accuracy("105.01", ["100"]) == 0.0  # just past 5%
    assert relaxed_accuracy("12%", ["0.12"]) == 1.0  # percentages read as fractions
    assert relaxed_accuracy("Yes", ["yes"]) == 1.0 and relaxed_accuracy("no", ["yes"]) == 0.0
    assert relaxed_accuracy("0", ["0"]) == 1.0 and relaxed_accuracy("0.01", ["0"]) == 0.0


@pytest.mark.parametrize("reply,letter", [
    ("(B)", "B"), ("B.", "B"), ("the answer is B", "B"), ("B", "B"), ("(A) or maybe (C)", "C"),
    ("I think the correct option here is the green one", "C"), ("no idea", None),
])
def test_mmmu_multiple_choice_extraction(reply, letter):
    assert parse_choice(reply, ["red", "blue", "green one", "cyan"]) == letter


def test_mmmu_open_answers():
    assert mmmu_open_accuracy("The answer is 3.50.", ["3.5"]) == 1.0  # numbers compared as numbers
    assert mmmu_open_accuracy("So the total is 1,200", ["1200"]) == 1.0
    assert mmmu_open_accuracy("Therefore the result is mitochondria", ["Mitochondria"]) == 1.0
    assert mmmu_open_accuracy("the answer is 4", ["5"]) == 0.0


def test_mathvista_rules_and_extraction_report():
    mc = MathVistaQuestion("multi_choice", "text", "12", ("10", "12", "14"))
    assert mathvista_score("B", mc) == (1.0, Extraction.LETTER)
    assert mathvista_score("12", mc) == (1.0, Extraction.DIRECT)
    integer = MathVistaQuestion("free_form", "integer", "7")
    assert mathvista_score("7", integer) == (1.0, Extraction.DIRECT)
    assert mathvista_score("There are 3 red and 7 blue cubes", integer) == (1.0, Extraction.LAST_NUMBER)
    assert mathvista_score("The answer is 7.", integer) == (1.0, Extraction.ANSWER_IS)
    flt = MathVistaQuestion("free_form", "float", "1.25", precision=2)
    assert mathvista_score("1.249", flt)[0] == 1.0 and mathvista_score("1.3", flt)[0] == 0.0
    assert mathvista_score("no idea", integer) == (0.0, Extraction.NONE)


def test_ocrbench_rules_and_score_out_of_1000():
    assert ocrbench_correct("The text says HELLO world", ["hello"])  # containment, case-insensitive
    assert not ocrbench_correct("hell", ["hello"])
    # HME100k: whitespace removed, case kept
    assert ocrbench_correct("x ^ { 2 } + 1", ["x^{2}+1"], "HME100k")
    assert not ocrbench_correct("X^{2}+1", ["x^{2}+1"], "HME100k")
    rows = [{"score": 1.0, "category": "Regular Text Recognition"},
            {"score": 1.0, "category": "Artistic Text Recognition"},
            {"score": 0.0, "category": "Doc-oriented VQA"},
            {"score": 1.0, "category": "Key Information Extraction"}]
    summary = aggregate(Benchmark.OCRBENCH, rows)
    assert summary["score"] == 750.0  # 3 of 4 correct, scaled to 1000 questions
    assert summary["categories"] == {"Doc-oriented VQA": 0, "Key Information Extraction": 1, "Text Recognition": 2}


def test_gsm8k_final_numbers():
    assert gold_answer("Natalia sold 48/2 = 24 clips...\n#### 72") == "72"
    assert final_number("48 + 24 = 72. The answer is 72.") == "72"
    assert final_number("She pays $1,250.00 in total") == "1250"
    assert final_number("The answer is 5 apples, not 6") == "5"  # the number after the marker wins
    assert gsm8k_accuracy("so 18 - 3 = 15 ... The answer is 18", "18") == 1.0
    assert gsm8k_accuracy("no number", "18") == 0.0


def test_math_equivalences():
    assert last_boxed("so \\boxed{\\frac{1}{2}} and then \\boxed{3}") == "3"
    assert last_boxed("\\boxed{\\frac{a}{b^{2}}}") == "\\frac{a}{b^{2}}"
    assert is_equiv("\\dfrac{1}{2}", "\\frac12")
    assert is_equiv("0.5", "\\frac{1}{2}")
    assert is_equiv("1/2", "\\frac{1}{2}")
    assert is_equiv("x = 5", "5")
    assert is_equiv("90^\\circ", "90")
    assert is_equiv("\\left( 3, 4 \\right)", "(3,4)")
    assert is_equiv("\\sqrt2", "\\sqrt{2}")
    assert is_equiv("50\\%", "50")
    assert is_equiv(".5", "0.5") and not is_equiv("2", "3")
    assert math_accuracy("... so the answer is \\boxed{\\dfrac{3}{4}}.", "We get $\\boxed{\\frac34}$.") == 1.0
