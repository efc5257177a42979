//! Mesh files: GLB (default), OBJ, binary STL, PLY. Normals are smooth (area-weighted) vertex
//! normals; positions are in the model's units (the official bounds are ±1.01).
//!
//! OBJ, STL and PLY are a few lines of text or fixed-layout bytes, written here; the GLB
//! container goes through the `gltf` crate (which is also what the tests re-read it with).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Mesh;

/// The mesh files we write: one list for the CLI (by extension), the server (`format=`) and
/// the app's downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Glb,
    Obj,
    Stl,
    Ply,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Glb, Format::Obj, Format::Stl, Format::Ply];

    /// By name or file extension, any case (`glb`, `OBJ`…).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.extension().eq_ignore_ascii_case(name))
    }

    /// The format a file name asks for, by its extension.
    pub fn of_path(path: &std::path::Path) -> Result<Self, String> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Self::parse)
            .ok_or_else(|| {
                format!(
                    "{}: the output must end in {}",
                    path.display(),
                    Self::names()
                )
            })
    }

    /// "glb, obj, stl or ply", for messages.
    pub fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|f| f.extension()).collect();
        format!(
            "{} or {}",
            names[..names.len() - 1].join(", "),
            names[names.len() - 1]
        )
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Glb => "glb",
            Format::Obj => "obj",
            Format::Stl => "stl",
            Format::Ply => "ply",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Glb => "model/gltf-binary",
            Format::Obj => "model/obj",
            Format::Stl => "model/stl",
            // No registered type; what Blender and MeshLab serve it as.
            Format::Ply => "application/x-ply",
        }
    }

    /// The file, with per-vertex colours where the format carries them (STL has none).
    pub fn encode(self, mesh: &Mesh, colors: Option<&[[u8; 3]]>) -> Vec<u8> {
        match self {
            Format::Glb => to_glb_colored(mesh, colors),
            Format::Obj => to_obj_colored(mesh, colors).into_bytes(),
            Format::Stl => to_stl(mesh, 1.0),
            Format::Ply => to_ply_colored(mesh, colors),
        }
    }
}

/// Area-weighted vertex normals, unit length (zero for unused vertices).
pub fn vertex_normals(mesh: &Mesh) -> Vec<[f32; 3]> {
    let mut normals = vec![[0.0f32; 3]; mesh.positions.len()];
    for t in &mesh.triangles {
        let n = face_normal(mesh, t); // length = 2 × area: larger faces weigh more
        for &i in t {
            for d in 0..3 {
                normals[i as usize][d] += n[d];
            }
        }
    }
    for n in &mut normals {
        let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
        if len > 0.0 {
            *n = n.map(|c| c / len);
        }
    }
    normals
}

fn face_normal(mesh: &Mesh, t: &[u32; 3]) -> [f32; 3] {
    let [a, b, c] = t.map(|i| mesh.positions[i as usize]);
    let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    [
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    ]
}

/// Wavefront OBJ with vertex normals.
pub fn to_obj(mesh: &Mesh) -> String {
    to_obj_colored(mesh, None)
}

/// OBJ with vertex colours as `v x y z r g b` (0–1), the extension Blender and MeshLab read.
pub fn to_obj_colored(mesh: &Mesh, colors: Option<&[[u8; 3]]>) -> String {
    use std::fmt::Write;
    if let Some(colors) = colors {
        assert_eq!(colors.len(), mesh.positions.len(), "one colour per vertex");
    }
    let normals = vertex_normals(mesh);
    let mut out = String::from("# Orfeas\n");
    for (i, p) in mesh.positions.iter().enumerate() {
        let _ = write!(out, "v {} {} {}", p[0], p[1], p[2]);
        if let Some(c) = colors.map(|c| c[i]) {
            let [r, g, b] = c.map(|x| f32::from(x) / 255.0);
            let _ = write!(out, " {r} {g} {b}");
        }
        out.push('\n');
    }
    for n in &normals {
        let _ = writeln!(out, "vn {} {} {}", n[0], n[1], n[2]);
    }
    for t in &mesh.triangles {
        let [a, b, c] = t.map(|i| i + 1);
        let _ = writeln!(out, "f {a}//{a} {b}//{b} {c}//{c}");
    }
    out
}

/// Binary STL; `scale` multiplies positions (e.g. 100 for centimetres from metres).
pub fn to_stl(mesh: &Mesh, scale: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(84 + 50 * mesh.triangles.len());
    let mut header = [0u8; 80];
    header[..13].copy_from_slice(b"Orfeas binary");
    out.extend_from_slice(&header);
    out.extend_from_slice(&(mesh.triangles.len() as u32).to_le_bytes());
    for t in &mesh.triangles {
        let n = face_normal(mesh, t);
        let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
            .sqrt()
            .max(f32::MIN_POSITIVE);
        for c in n {
            out.extend_from_slice(&(c / len).to_le_bytes());
        }
        for &i in t {
            for c in mesh.positions[i as usize] {
                out.extend_from_slice(&(c * scale).to_le_bytes());
            }
        }
        out.extend_from_slice(&0u16.to_le_bytes());
    }
    out
}

/// Binary little-endian PLY with positions and normals.
pub fn to_ply(mesh: &Mesh) -> Vec<u8> {
    to_ply_colored(mesh, None)
}

/// PLY with `red green blue` bytes per vertex when colours are given.
pub fn to_ply_colored(mesh: &Mesh, colors: Option<&[[u8; 3]]>) -> Vec<u8> {
    if let Some(colors) = colors {
        assert_eq!(colors.len(), mesh.positions.len(), "one colour per vertex");
    }
    let normals = vertex_normals(mesh);
    let color_properties = if colors.is_some() {
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
    } else {
        ""
    };
    let header = format!(
        "ply\nformat binary_little_endian 1.0\ncomment Orfeas\nelement vertex {}\n\
         property float x\nproperty float y\nproperty float z\n\
         property float nx\nproperty float ny\nproperty float nz\n{color_properties}\
         element face {}\nproperty list uchar int vertex_indices\nend_header\n",
        mesh.positions.len(),
        mesh.triangles.len()
    );
    let mut out = header.into_bytes();
    for (i, (p, n)) in mesh.positions.iter().zip(&normals).enumerate() {
        for c in p.iter().chain(n) {
            out.extend_from_slice(&c.to_le_bytes());
        }
        if let Some(colors) = colors {
            out.extend_from_slice(&colors[i]);
        }
    }
    for t in &mesh.triangles {
        out.push(3);
        for &i in t {
            out.extend_from_slice(&(i as i32).to_le_bytes());
        }
    }
    out
}

/// glTF 2.0 binary: one mesh, positions + normals + u32 indices.
pub fn to_glb(mesh: &Mesh) -> Vec<u8> {
    to_glb_colored(mesh, None)
}

/// GLB with per-vertex colours (`COLOR_0`, normalised RGBA bytes) when given.
pub fn to_glb_colored(mesh: &Mesh, colors: Option<&[[u8; 3]]>) -> Vec<u8> {
    if let Some(colors) = colors {
        assert_eq!(colors.len(), mesh.positions.len(), "one colour per vertex");
    }
    let normals = vertex_normals(mesh);
    let mut bin: Vec<u8> = Vec::new();
    for p in &mesh.positions {
        for c in p {
            bin.extend_from_slice(&c.to_le_bytes());
        }
    }
    let positions_len = bin.len();
    for n in &normals {
        for c in n {
            bin.extend_from_slice(&c.to_le_bytes());
        }
    }
    let normals_len = bin.len() - positions_len;
    for c in colors.unwrap_or_default() {
        bin.extend_from_slice(&[c[0], c[1], c[2], 255]);
    }
    let colors_len = bin.len() - positions_len - normals_len;
    for t in &mesh.triangles {
        for i in t {
            bin.extend_from_slice(&i.to_le_bytes());
        }
    }
    let indices_len = bin.len() - positions_len - normals_len - colors_len;
    let (min, max) = mesh.bounds().unwrap_or(([0.0; 3], [0.0; 3]));
    const FLOAT: u32 = 5126;
    const UNSIGNED_BYTE: u32 = 5121;
    const UNSIGNED_INT: u32 = 5125;
    const ARRAY_BUFFER: u32 = 34962;
    const ELEMENT_ARRAY_BUFFER: u32 = 34963;
    let mut views = vec![
        json!({ "buffer": 0, "byteOffset": 0, "byteLength": positions_len, "target": ARRAY_BUFFER }),
        json!({ "buffer": 0, "byteOffset": positions_len, "byteLength": normals_len, "target": ARRAY_BUFFER }),
    ];
    let mut accessors = vec![
        json!({ "bufferView": 0, "componentType": FLOAT, "count": mesh.positions.len(), "type": "VEC3", "min": min, "max": max }),
        json!({ "bufferView": 1, "componentType": FLOAT, "count": normals.len(), "type": "VEC3" }),
    ];
    let mut attributes = json!({ "POSITION": 0, "NORMAL": 1 });
    if colors.is_some() {
        views.push(json!({ "buffer": 0, "byteOffset": positions_len + normals_len, "byteLength": colors_len, "target": ARRAY_BUFFER }));
        accessors.push(json!({ "bufferView": 2, "componentType": UNSIGNED_BYTE, "normalized": true, "count": mesh.positions.len(), "type": "VEC4" }));
        attributes["COLOR_0"] = json!(2);
    }
    let indices_view = views.len();
    views.push(json!({ "buffer": 0, "byteOffset": positions_len + normals_len + colors_len, "byteLength": indices_len, "target": ELEMENT_ARRAY_BUFFER }));
    accessors.push(json!({ "bufferView": indices_view, "componentType": UNSIGNED_INT, "count": mesh.triangles.len() * 3, "type": "SCALAR" }));
    let document = json!({
        "asset": { "version": "2.0", "generator": "Orfeas" },
        "scene": 0,
        "scenes": [{ "nodes": [0] }],
        "nodes": [{ "mesh": 0, "name": "orfeas-mesh" }],
        "meshes": [{ "primitives": [{ "attributes": attributes, "indices": indices_view, "mode": 4 }] }],
        "buffers": [{ "byteLength": bin.len() }],
        "bufferViews": views,
        "accessors": accessors,
    });
    let mut json = serde_json::to_vec(&document).expect("a JSON document");
    // Chunks are 4-byte aligned: JSON padded with spaces, BIN with zeros.
    while !json.len().is_multiple_of(4) {
        json.push(b' ');
    }
    while !bin.len().is_multiple_of(4) {
        bin.push(0);
    }
    let glb = gltf::Glb {
        header: gltf::binary::Header {
            magic: *b"glTF",
            version: 2,
            length: (12 + 8 + json.len() + 8 + bin.len()) as u32,
        },
        json: Cow::Owned(json),
        bin: Some(Cow::Owned(bin)),
    };
    glb.to_vec().expect("writing GLB to memory")
}
