// The viewer's one shader: lit faces (shaded), faint faces under dark edges (wireframe), or
// normals as colours. Lighting follows the camera so that a turning object always shows its form.

struct Uniforms {
    view_proj: mat4x4<f32>,
    model: mat4x4<f32>,
    eye: vec4<f32>,
    // x: mode (0 shaded, 1 wireframe, 2 normals), y: 1 when the mesh has vertex colours.
    params: vec4<f32>,
}

@group(0) @binding(0) var<uniform> u: Uniforms;

struct VertexOut {
    @builtin(position) clip: vec4<f32>,
    @location(0) world: vec3<f32>,
    @location(1) normal: vec3<f32>,
    @location(2) color: vec3<f32>,
}

@vertex
fn vs_main(
    @location(0) position: vec3<f32>,
    @location(1) normal: vec3<f32>,
    @location(2) color: vec4<f32>,
) -> VertexOut {
    var out: VertexOut;
    let world = u.model * vec4<f32>(position, 1.0);
    out.clip = u.view_proj * world;
    out.world = world.xyz;
    // The model matrix is a uniform scale and a shift: normals need no inverse transpose.
    out.normal = normal;
    out.color = color.rgb;
    return out;
}

fn to_display(linear: vec3<f32>) -> vec3<f32> {
    // The canvas formats on the web are not sRGB: encode here.
    return pow(clamp(linear, vec3<f32>(0.0), vec3<f32>(1.0)), vec3<f32>(1.0 / 2.2));
}

@fragment
fn fs_faces(in: VertexOut) -> @location(0) vec4<f32> {
    var n = normalize(in.normal);
    if (u.params.x > 1.5) {
        return vec4<f32>(n * 0.5 + 0.5, 1.0);
    }
    let view = normalize(u.eye.xyz - in.world);
    // Open surfaces show their back: light it as a front.
    if (dot(n, view) < 0.0) {
        n = -n;
    }
    var base = vec3<f32>(0.62, 0.60, 0.56);
    if (u.params.y > 0.5) {
        base = pow(in.color, vec3<f32>(2.2));
    }
    let key = normalize(view + vec3<f32>(0.0, 0.7, 0.0));
    let sky = mix(vec3<f32>(0.18, 0.17, 0.16), vec3<f32>(0.42, 0.45, 0.50), n.y * 0.5 + 0.5);
    let diffuse = max(dot(n, key), 0.0) * 0.8;
    let specular = pow(max(dot(n, normalize(key + view)), 0.0), 40.0) * 0.18;
    let rim = pow(1.0 - max(dot(n, view), 0.0), 3.0) * 0.12;
    var lit = base * (sky + diffuse) + vec3<f32>(specular + rim);
    if (u.params.x > 0.5) {
        lit = mix(lit, vec3<f32>(0.93, 0.94, 0.96), 0.65);
    }
    return vec4<f32>(to_display(lit), 1.0);
}

@fragment
fn fs_edges(in: VertexOut) -> @location(0) vec4<f32> {
    return vec4<f32>(0.10, 0.16, 0.28, 1.0);
}
