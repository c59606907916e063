//! Compiles proto/ with protox (a pure-Rust protobuf compiler, so no protoc is needed) and embeds the
//! bundled sample study for `radstream demo`.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["radstream/v1/radstream.proto"], ["proto"])?;
    let descriptor_path = out_dir.join("radstream_descriptor.bin");
    fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        // The instance's Part-10 bytes as `bytes::Bytes`: prost then takes them out of tonic's receive
        // buffer by reference (`BytesMut::split_to`) instead of copying them into a `Vec<u8>`, so a
        // message costs its size once, not twice, and the copy that no budget could see is gone.
        .bytes(".radstream.v1.Instance.dicom")
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_fds(fds)?;
    // Serde impls of the canonical proto3 JSON mapping (int64 as strings, enums by name, defaults
    // omitted) for `push/watch/models --json`, from the same descriptor set. Proto field names are
    // kept (`preserve_proto_field_names`): valid proto3 JSON every parser accepts, and the keys users
    // already know.
    pbjson_build::Builder::new()
        .register_descriptors(&fs::read(&descriptor_path)?)?
        .preserve_proto_field_names()
        .build(&[".radstream.v1"])?;

    // The demo study is compiled into the binary so `radstream demo` runs from any directory.
    let sample_dir = PathBuf::from("models/lesion-demo/sample-study");
    println!("cargo:rerun-if-changed={}", sample_dir.display());
    let mut files: Vec<PathBuf> = match fs::read_dir(&sample_dir) {
        Ok(dir) => dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    let mut code = String::from("/// The bundled sample study: (file name, Part-10 bytes), in file-name order.\npub static SAMPLE_STUDY: &[(&str, &[u8])] = &[\n");
    for f in &files {
        let abs = fs::canonicalize(f)?;
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        code.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            abs.display().to_string()
        ));
    }
    code.push_str("];\n");
    fs::write(out_dir.join("sample_study.rs"), code)?;
    Ok(())
}
