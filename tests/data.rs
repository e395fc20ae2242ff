//! Data sources: the real MNIST files, CSV parsing, synthetic sets, and every
//! kind of malformed input giving an error that says what and where.

use std::path::{Path, PathBuf};

use modelc::data::csv::{self, Scale, Target};
use modelc::data::mnist::{self, Split};
use modelc::data::{batches, epoch_order, synthetic, validation_split, DataError, Labels};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("modelc-data-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn gunzip(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let raw = std::fs::read(path).expect("file");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).expect("gzip");
    out
}

#[test]
fn shipped_mnist_loads() {
    let train = mnist::load(Path::new("data/mnist"), Split::Train, (0, 9)).expect("train split");
    let test = mnist::load(Path::new("data/mnist"), Split::Test, (0, 9)).expect("test split");
    assert_eq!((train.len, test.len, train.width), (60_000, 10_000, 784));
    let Labels::Classes { values, classes } = &train.labels else { panic!("class labels") };
    assert_eq!(*classes, 10);
    // The well-known first training labels.
    assert_eq!(&values[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert!(train.features.iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(train.features.contains(&1.0));
}

#[test]
fn mnist_digit_subsets_are_relabelled() {
    let upper = mnist::load(Path::new("data/mnist"), Split::Train, (5, 9)).expect("subset");
    // 5,421 fives + 5,918 sixes + 6,265 sevens + 5,851 eights + 5,949 nines.
    assert_eq!(upper.len, 29_404);
    let Labels::Classes { values, classes } = &upper.labels else { panic!("class labels") };
    assert_eq!(*classes, 5);
    assert_eq!(values[0], 0, "the first training digit, a 5, becomes class 0");
    assert!(values.iter().all(|v| *v < 5));
}

#[test]
fn uncompressed_idx_files_load_too() {
    let d = temp_dir("raw");
    for f in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::write(d.join(f), gunzip(&Path::new("data/mnist").join(format!("{f}.gz")))).expect("write");
    }
    let test = mnist::load(&d, Split::Test, (0, 9)).expect("raw files");
    assert_eq!(test.len, 10_000);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn malformed_mnist_files_are_named_errors() {
    let d = temp_dir("bad");
    let images = gunzip(Path::new("data/mnist/t10k-images-idx3-ubyte.gz"));
    let labels = gunzip(Path::new("data/mnist/t10k-labels-idx1-ubyte.gz"));
    let write = |name: &str, bytes: &[u8]| std::fs::write(d.join(name), bytes).expect("write");

    let missing = mnist::load(&d, Split::Test, (0, 9)).expect_err("nothing there");
    assert!(missing.to_string().contains("t10k-images-idx3-ubyte[.gz]"), "{missing}");

    write("t10k-images-idx3-ubyte", &images[..5000]);
    write("t10k-labels-idx1-ubyte", &labels);
    let e = mnist::load(&d, Split::Test, (0, 9)).expect_err("truncated");
    assert!(matches!(e, DataError::Truncated { expected: 7_840_000, found: 4984, .. }), "{e}");

    write("t10k-images-idx3-ubyte", &labels);
    let e = mnist::load(&d, Split::Test, (0, 9)).expect_err("labels as images");
    assert!(e.to_string().contains("not an IDX image file (magic number 0x00000801"), "{e}");

    write("t10k-images-idx3-ubyte", &images);
    write("t10k-labels-idx1-ubyte", &labels[..5008]);
    let e = mnist::load(&d, Split::Test, (0, 9)).expect_err("fewer labels");
    assert!(matches!(e, DataError::Truncated { expected: 10_000, found: 5000, .. }), "{e}");

    // Fewer images than labels.
    let mut fewer = images.clone();
    fewer[4..8].copy_from_slice(&9_999u32.to_be_bytes());
    write("t10k-images-idx3-ubyte", &fewer);
    write("t10k-labels-idx1-ubyte", &labels);
    let e = mnist::load(&d, Split::Test, (0, 9)).expect_err("count mismatch");
    assert!(matches!(e, DataError::CountMismatch { image_count: 9999, label_count: 10_000, .. }), "{e}");
    write("t10k-images-idx3-ubyte", &images);
    let mut wrong = labels.clone();
    wrong[8] = 11;
    write("t10k-labels-idx1-ubyte", &wrong);
    let e = mnist::load(&d, Split::Test, (0, 9)).expect_err("label 11");
    assert!(matches!(e, DataError::LabelOutOfRange { index: 0, label: 11, .. }), "{e}");

    std::fs::remove_file(d.join("t10k-labels-idx1-ubyte")).ok();
    write("t10k-labels-idx1-ubyte.gz", &[0x1f, 0x8b, 8, 0, 1, 2, 3]);
    let e = mnist::load(&d, Split::Test, (0, 9)).expect_err("bad gzip");
    assert!(e.to_string().contains("corrupt gzip data"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

fn csv_err(text: &str, label: &str, header: bool, target: Target) -> String {
    csv::parse(Path::new("t.csv"), text, label, header, Scale::None, target).expect_err("an error").to_string()
}

#[test]
fn csv_parses_and_scales() {
    let text = "a,b,label\n1,10,0\n3,10,1\n\n5,10,2\n";
    let d = csv::parse(Path::new("t.csv"), text, "label", true, Scale::None, Target::Classes(3)).expect("parses");
    assert_eq!((d.len, d.width), (3, 2));
    assert_eq!(d.features, vec![1.0, 10.0, 3.0, 10.0, 5.0, 10.0]);
    assert_eq!(d.labels, Labels::Classes { values: vec![0, 1, 2], classes: 3 });
    let s = csv::parse(Path::new("t.csv"), text, "label", true, Scale::Standard, Target::Classes(3)).expect("parses");
    let col: Vec<f32> = (0..3).map(|i| s.features[i * 2]).collect();
    assert!((col[0] + 1.2247449).abs() < 1e-6 && col[1].abs() < 1e-6, "{col:?}");
    assert_eq!(s.features[1], 0.0, "a constant column becomes 0");
    let m = csv::parse(Path::new("t.csv"), text, "label", true, Scale::MinMax, Target::Value).expect("parses");
    assert_eq!((m.features[0], m.features[2], m.features[4]), (0.0, 0.5, 1.0));
    let n = csv::parse(Path::new("t.csv"), "1,2,0.5\n", "2", false, Scale::None, Target::Value).expect("no header");
    assert_eq!(n.labels, Labels::Values { values: vec![0.5], width: 1 });
}

#[test]
fn malformed_csv_says_line_and_column() {
    let cls = Target::Classes(3);
    assert_eq!(csv_err("a,b,label\n1,2,0\n1,2\n", "label", true, cls), "t.csv:3:1: 2 columns, but the header has 3");
    assert_eq!(csv_err("a,b,label\n1,x2,0\n", "label", true, cls), "t.csv:2:3: `x2` is not a number");
    assert_eq!(csv_err("a,b,label\n1,2,7\n", "label", true, cls), "t.csv:2:5: label `7` is not a class index in 0..3");
    assert_eq!(
        csv_err("a,b,label\n1,2,0.5\n", "label", true, cls),
        "t.csv:2:5: label `0.5` is not a class index in 0..3"
    );
    assert_eq!(
        csv_err("a,b,y\n1,2,0\n", "label", true, cls),
        "t.csv:1:1: no column named `label` (the columns are a, b, y)"
    );
    assert_eq!(csv_err("a,b,label\n\"1\",2,0\n", "label", true, cls), "t.csv:2:1: quoted fields are not supported");
    assert_eq!(csv_err("a,b,label\n", "label", true, cls), "t.csv:1:1: the file has no data rows");
    assert_eq!(csv_err("", "label", true, cls), "t.csv:1:1: the file is empty");
    assert_eq!(
        csv_err("1,2\n", "label", false, cls),
        "t.csv:1:1: without a header the label column is a number (0-based), not `label`"
    );
    assert_eq!(csv_err("1,inf,0\n", "2", false, cls), "t.csv:1:3: `inf` is not a finite number");
}

#[test]
fn synthetic_sets_are_seeded_and_balanced() {
    let x = synthetic::xor(false);
    assert_eq!(x.labels, Labels::Values { values: vec![0.0, 1.0, 1.0, 0.0], width: 1 });
    let a = synthetic::spirals(300, 3, 0.1, 7);
    assert_eq!(a, synthetic::spirals(300, 3, 0.1, 7));
    assert_ne!(a, synthetic::spirals(300, 3, 0.1, 8));
    let Labels::Classes { values, .. } = &a.labels else { panic!() };
    assert_eq!(values.iter().filter(|v| **v == 2).count(), 100);
}

#[test]
fn shuffles_splits_and_batches() {
    let o = epoch_order(10, 42, 0);
    assert_eq!(o, epoch_order(10, 42, 0), "same seed and epoch, same order");
    assert_ne!(o, epoch_order(10, 42, 1), "each epoch reshuffles");
    let mut sorted = o.clone();
    sorted.sort();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    let (train, val) = validation_split(100, 0.1, 3);
    assert_eq!((train.len(), val.len()), (90, 10));
    assert!(val.iter().all(|v| !train.contains(v)));
    let sizes: Vec<usize> = batches(&o, 4).map(<[usize]>::len).collect();
    assert_eq!(sizes, vec![4, 4, 2], "the last partial batch is kept");
}
