from ecomtl.tasks.spans import bio_spans, entity_prf


def test_bio_spans_strict():
    tags = ["B-color", "I-color", "O", "B-brand", "B-brand", "I-brand", "I-color", "I-color"]
    # a stray I- (type change or after O) starts nothing in strict IOB2
    assert bio_spans(tags) == [("color", 0, 2), ("brand", 3, 4), ("brand", 4, 6)]
    assert bio_spans(["I-color", "I-color"]) == []


def test_entity_prf_matches_hand_count():
    gold = [["B-a", "I-a", "O", "B-b"], ["B-c"]]
    pred = [["B-a", "I-a", "O", "B-a"], ["O"]]
    # gold: a(0,2) b(3,4) c(0,1)=3; pred: a(0,2) a(3,4)=2; correct 1
    m = entity_prf(gold, pred)
    assert m["precision"] == 0.5 and abs(m["recall"] - 1 / 3) < 1e-9 and abs(m["f1"] - 0.4) < 1e-9


def test_boundary_error_is_wrong_entity():
    m = entity_prf([["B-a", "I-a"]], [["B-a", "O"]])
    assert m["f1"] == 0.0


def test_empty():
    assert entity_prf([["O"]], [["O"]])["f1"] == 0.0
