//! Classification metrics against scikit-learn's own figures
//! (`tests/fixtures/metrics_sklearn.json`, made by
//! `tests/fixtures/gen_metrics.py`).

use modelc::metrics::Confusion;
use modelc_compiler::check::layers::Average;

#[test]
fn metrics_match_scikit_learn() {
    let text = std::fs::read_to_string("tests/fixtures/metrics_sklearn.json").expect("fixture");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    assert!(cases.len() >= 7, "the fixture has {} cases", cases.len());
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let ints = |k: &str| -> Vec<f32> {
            case[k].as_array().expect(k).iter().map(|v| v.as_u64().expect("int") as f32).collect()
        };
        let mut c = Confusion::new(case["classes"].as_u64().expect("classes") as usize);
        c.add(&ints("labels"), &ints("predictions"));
        let want = |k: &str| case[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
        let got = [
            ("accuracy", c.accuracy()),
            ("precision_macro", c.precision(Average::Macro)),
            ("recall_macro", c.recall(Average::Macro)),
            ("f1_macro", c.f1(Average::Macro)),
            ("precision_weighted", c.precision(Average::Weighted)),
            ("recall_weighted", c.recall(Average::Weighted)),
            ("f1_weighted", c.f1(Average::Weighted)),
            ("precision_micro", c.precision(Average::Micro)),
            ("recall_micro", c.recall(Average::Micro)),
            ("f1_micro", c.f1(Average::Micro)),
        ];
        for (k, v) in got {
            assert!((v - want(k)).abs() < 1e-12, "{name}: {k} is {v}, scikit-learn says {}", want(k));
        }
    }
}

/// The defect this guards: 100% accuracy on 3 of 10 declared classes was
/// reported as macro F1 30% (the 7 absent classes averaged in as 0).
#[test]
fn classes_absent_from_labels_and_predictions_are_not_averaged() {
    let mut c = Confusion::new(10);
    c.add(&[0.0, 1.0, 2.0], &[0.0, 1.0, 2.0]);
    assert_eq!(c.f1(Average::Macro), 1.0);
    assert_eq!(c.present().collect::<Vec<_>>(), [0, 1, 2]);
}
