//! The `mtpath` binary end to end on real tiles and the fixture weights.

mod common;

use common::{mtpath, s, tiles};

use candle_core::Device;
use mtpath_shared::inference::FeatureExtractor;
use mtpath_shared::testdata::{data_dir, fixtures_dir};
use mtpath_shared::weights::read_weights_file;

#[test]
fn features_writes_rows_in_image_order_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("feats.safetensors");
    let weights = fixtures_dir().join("resnet18.safetensors");
    let tiles = tiles();
    let mut args = vec![
        "features",
        "--weights",
        s(&weights),
        "--out",
        s(&out),
        "--batch",
        "2",
    ];
    args.extend(tiles.iter().map(|p| s(p)));
    let o = mtpath(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let file = read_weights_file(&out, &Device::Cpu).unwrap();
    let feats = file.get("features").unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(feats.len(), 3);
    assert_eq!(feats[0].len(), 512);
    let listed: Vec<String> = serde_json::from_str(&file.metadata["images"]).unwrap();
    assert_eq!(
        listed,
        tiles
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(file.metadata["architecture"], "resnet18");

    // Each row equals the library's features of that image alone (batching changes nothing).
    let ex = FeatureExtractor::from_tensor_file(
        &read_weights_file(&weights, &Device::Cpu).unwrap(),
        None,
        &Device::Cpu,
    )
    .unwrap();
    for (row, tile) in feats.iter().zip(&tiles) {
        let want = ex.extract_bytes(&std::fs::read(tile).unwrap()).unwrap();
        let err: f32 = row
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "{}: max abs diff {err}", tile.display());
    }
}

#[test]
fn features_on_a_directory_and_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.safetensors");
    let weights = fixtures_dir().join("resnet18.safetensors");
    let folder = data_dir().join("nct-crc-samples/images");
    let o = mtpath(&[
        "features",
        "--weights",
        s(&weights),
        "--size",
        "112",
        "--out",
        s(&out),
        s(&folder),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = read_weights_file(&out, &Device::Cpu).unwrap();
    assert_eq!(file.get("features").unwrap().dims(), &[9, 512]);

    let missing = dir.path().join("nope.jpg");
    let o = mtpath(&[
        "features",
        "--weights",
        s(&weights),
        "--out",
        s(&out),
        s(&missing),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.jpg"));

    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let o = mtpath(&[
        "features",
        "--weights",
        s(&weights),
        "--out",
        s(&out),
        s(&broken),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("broken.jpg"));

    let o = mtpath(&[
        "features",
        "--arch",
        "resnet50",
        "--weights",
        s(&weights),
        "--out",
        s(&out),
        s(&tiles()[0]),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resnet18.safetensors"), "{err}");
}

#[test]
fn info_describes_a_torchvision_file() {
    let weights = fixtures_dir().join("densenet121.safetensors");
    let o = mtpath(&["info", s(&weights)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("architecture:  densenet121 (1024-d features)"),
        "{text}"
    );
    assert!(text.contains("trunk params:  6953856"), "{text}");
    assert!(text.contains("classifier"), "{text}");
}

#[test]
fn features_of_a_task_split_carry_labels_and_come_from_the_cache_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixtures_dir().join("resnet18.safetensors");
    let task = data_dir().join("tcga-luad-lusc");
    let cache = dir.path().join("cache");
    let out = dir.path().join("test.safetensors");
    let args = [
        "features",
        "--weights",
        s(&weights),
        "--task",
        s(&task),
        "--split",
        "test",
        "--size",
        "32",
        "--cache",
        s(&cache),
        "--out",
        s(&out),
    ];
    let o = mtpath(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = read_weights_file(&out, &Device::Cpu).unwrap();
    let feats = file.get("features").unwrap();
    // tcga-luad-lusc's test split is the source's: 60 tiles of two held-out slides.
    assert_eq!(feats.dims(), &[60, 512]);
    let labels: Vec<i64> = file.get("labels").unwrap().to_vec1().unwrap();
    assert!(labels.contains(&0) && labels.contains(&1) && labels.iter().all(|&l| l < 2));
    let meta = &file.metadata;
    let splits: Vec<String> = serde_json::from_str(&meta["splits"]).unwrap();
    assert!(splits.iter().all(|s| s == "test"));
    let images: Vec<String> = serde_json::from_str(&meta["images"]).unwrap();
    // A row equals the features of its image extracted on its own.
    let extractor = FeatureExtractor::from_tensor_file(
        &read_weights_file(&weights, &Device::Cpu).unwrap(),
        None,
        &Device::Cpu,
    )
    .map(|mut e| {
        e.set_sizes(37, 32).unwrap();
        e
    })
    .unwrap();
    let alone = extractor
        .extract_bytes(&std::fs::read(&images[5]).unwrap())
        .unwrap();
    let row: Vec<f32> = feats.get(5).unwrap().to_vec1().unwrap();
    let err = row
        .iter()
        .zip(&alone)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "{err}");
    // The whole task (190 tiles) is cached once; the second run reads it.
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let first: Vec<Vec<f32>> = feats.to_vec2().unwrap();
    let first_meta = file.metadata.clone();
    let o = mtpath(&args);
    assert!(o.status.success());
    let again = read_weights_file(&out, &Device::Cpu).unwrap();
    let again_rows: Vec<Vec<f32>> = again.get("features").unwrap().to_vec2().unwrap();
    assert!(again_rows == first, "cached features differ");
    assert!(again.metadata == first_meta);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("features 190/190"));
    // A bad split is named.
    let o = mtpath(&[
        "features",
        "--weights",
        s(&weights),
        "--task",
        s(&task),
        "--split",
        "dev",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--split dev"));
}
