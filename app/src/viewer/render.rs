//! The viewer's renderer: one mesh, lit, on a WebGPU canvas (wgpu), 4× multisampled, with a
//! depth buffer; wireframe draws the mesh's unique edges as lines over faint faces (WebGPU
//! has no polygon line mode). `snapshot` renders the same frame into a texture and reads it
//! back, for "save image" and for tests (headless Chromium does not composite WebGPU canvases
//! into its screenshots).

use glam::{Mat4, Vec3};
use wgpu::util::DeviceExt;

use super::camera::OrbitCamera;
use crate::protocol::ViewMode;

const SAMPLES: u32 = 4;
const DEPTH_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Depth32Float;
const BACKGROUND: wgpu::Color = wgpu::Color {
    r: 0.96,
    g: 0.965,
    b: 0.975,
    a: 1.0,
};

/// Geometry as the engine sends it: flat arrays.
#[derive(Debug, Clone, Default)]
pub struct MeshData {
    pub positions: Vec<f32>,
    pub normals: Vec<f32>,
    /// RGBA per vertex, or empty for the default clay.
    pub colors: Vec<u8>,
    pub indices: Vec<u32>,
}

impl MeshData {
    pub fn vertex_count(&self) -> usize {
        self.positions.len() / 3
    }

    pub fn check(&self) -> Result<(), String> {
        let n = self.vertex_count();
        if self.indices.is_empty() {
            return Err("mesh: no triangles".into());
        }
        if self.positions.len() != n * 3 || self.normals.len() != n * 3 {
            return Err("mesh: positions and normals must both be 3 floats per vertex".into());
        }
        if !self.colors.is_empty() && self.colors.len() != n * 4 {
            return Err("mesh: colours must be RGBA per vertex".into());
        }
        if !self.indices.len().is_multiple_of(3) || self.indices.iter().any(|&i| i as usize >= n) {
            return Err("mesh: triangle indices out of range".into());
        }
        Ok(())
    }

    /// Every edge once, as line-list indices.
    fn edges(&self) -> Vec<u32> {
        let mut edges: Vec<(u32, u32)> = self
            .indices
            .chunks_exact(3)
            .flat_map(|t| [(t[0], t[1]), (t[1], t[2]), (t[2], t[0])])
            .map(|(a, b)| (a.min(b), a.max(b)))
            .collect();
        edges.sort_unstable();
        edges.dedup();
        edges.into_iter().flat_map(|(a, b)| [a, b]).collect()
    }

    /// Centre and radius of the bounding box, so that any mesh fills the default view.
    fn framing(&self) -> (Vec3, f32) {
        let mut lo = Vec3::splat(f32::INFINITY);
        let mut hi = Vec3::splat(f32::NEG_INFINITY);
        for p in self.positions.chunks_exact(3) {
            let p = Vec3::new(p[0], p[1], p[2]);
            lo = lo.min(p);
            hi = hi.max(p);
        }
        if !lo.is_finite() {
            return (Vec3::ZERO, 1.0);
        }
        ((lo + hi) / 2.0, ((hi - lo).length() / 2.0).max(1e-6))
    }
}

struct GpuMesh {
    vertices: wgpu::Buffer,
    triangles: wgpu::Buffer,
    triangle_count: u32,
    edges: wgpu::Buffer,
    edge_count: u32,
    model: Mat4,
    has_colors: bool,
}

/// Where frames go: the canvas's own WebGPU context, or (where presenting to a canvas loses
/// the device, as in headless Chromium on SwiftShader) a texture read back and drawn by the
/// bootstrap script on the canvas's 2D context.
enum Output {
    Canvas {
        surface: wgpu::Surface<'static>,
        config: wgpu::SurfaceConfiguration,
    },
    Readback,
}

/// A frame rendered into a buffer, waiting to be mapped.
pub struct PendingFrame {
    buffer: wgpu::Buffer,
    width: u32,
    height: u32,
    row: u32,
    bgra: bool,
}

/// Where the renderer reports what its device says once it is built (the runtime posts both to
/// the UI): an error in a GPU call, and the device's loss.
#[derive(Clone, Copy)]
pub struct DeviceEvents {
    pub error: fn(String),
    pub lost: fn(String),
}

pub struct Renderer {
    device: wgpu::Device,
    queue: wgpu::Queue,
    output: Output,
    format: wgpu::TextureFormat,
    width: u32,
    height: u32,
    faces: wgpu::RenderPipeline,
    edges: wgpu::RenderPipeline,
    uniforms: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    msaa: wgpu::TextureView,
    depth: wgpu::TextureView,
    mesh: Option<GpuMesh>,
    pub adapter_name: String,
    // Held for the device's lifetime (the browser may reclaim what nothing references).
    _instance: wgpu::Instance,
    _adapter: wgpu::Adapter,
}

/// Bytes per vertex: position, normal (3 × f32 each), colour (4 × u8).
const VERTEX_STRIDE: u64 = 28;

impl Renderer {
    /// Destroy the device, as a driver reset would (its lost callback reports it).
    pub fn destroy_device(&self) {
        self.device.destroy();
    }

    /// `direct`: present on the canvas's WebGPU context; otherwise read frames back (the
    /// bootstrap script then owns the canvas's 2D context). What the device says later goes to
    /// `events`.
    pub async fn new(
        canvas: web_sys::OffscreenCanvas,
        direct: bool,
        events: DeviceEvents,
    ) -> Result<Self, String> {
        let (width, height) = (canvas.width().max(1), canvas.height().max(1));
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = wgpu::Backends::BROWSER_WEBGPU;
        let instance = wgpu::Instance::new(descriptor);
        let surface = if direct {
            Some(
                instance
                    .create_surface(wgpu::SurfaceTarget::OffscreenCanvas(canvas))
                    .map_err(|e| format!("cannot draw on the canvas: {e}"))?,
            )
        } else {
            None
        };
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                compatible_surface: surface.as_ref(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("no WebGPU adapter for the viewer: {e}"))?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("viewer"),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("the GPU refused the viewer a device: {e}"))?;
        device.on_uncaptured_error(std::sync::Arc::new(move |error| {
            (events.error)(format!("viewer GPU error: {error}"))
        }));
        device.set_device_lost_callback(move |reason, message| {
            (events.lost)(format!("GPU device lost ({reason:?}): {message}"))
        });
        let (output, format) = match surface {
            Some(surface) => {
                let caps = surface.get_capabilities(&adapter);
                let format = caps
                    .formats
                    .iter()
                    .copied()
                    .find(|f| !f.is_srgb())
                    .or_else(|| caps.formats.first().copied())
                    .ok_or("the canvas offers no texture format")?;
                let config = wgpu::SurfaceConfiguration {
                    usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                    format,
                    color_space: wgpu::SurfaceColorSpace::Auto,
                    width,
                    height,
                    present_mode: wgpu::PresentMode::Fifo,
                    desired_maximum_frame_latency: 2,
                    alpha_mode: wgpu::CompositeAlphaMode::Opaque,
                    view_formats: Vec::new(),
                };
                surface.configure(&device, &config);
                (Output::Canvas { surface, config }, format)
            }
            None => (Output::Readback, wgpu::TextureFormat::Rgba8Unorm),
        };

        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("viewer"),
            source: wgpu::ShaderSource::Wgsl(include_str!("shader.wgsl").into()),
        });
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("viewer uniforms"),
            size: UNIFORM_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("viewer"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("viewer"),
            layout: &layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: uniforms.as_entire_binding(),
            }],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("viewer"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = |topology, fragment: &str, depth_bias: i32| {
            device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                label: Some(fragment),
                layout: Some(&pipeline_layout),
                vertex: wgpu::VertexState {
                    module: &shader,
                    entry_point: Some("vs_main"),
                    compilation_options: Default::default(),
                    buffers: &[Some(wgpu::VertexBufferLayout {
                        array_stride: VERTEX_STRIDE,
                        step_mode: wgpu::VertexStepMode::Vertex,
                        attributes: &wgpu::vertex_attr_array![
                            0 => Float32x3, 1 => Float32x3, 2 => Unorm8x4
                        ],
                    })],
                },
                primitive: wgpu::PrimitiveState {
                    topology,
                    ..Default::default()
                },
                depth_stencil: Some(wgpu::DepthStencilState {
                    format: DEPTH_FORMAT,
                    depth_write_enabled: Some(true),
                    depth_compare: Some(wgpu::CompareFunction::LessEqual),
                    stencil: Default::default(),
                    // Faces step back a little so their own edges win the depth test.
                    bias: wgpu::DepthBiasState {
                        constant: depth_bias,
                        slope_scale: depth_bias as f32,
                        clamp: 0.0,
                    },
                }),
                multisample: wgpu::MultisampleState {
                    count: SAMPLES,
                    ..Default::default()
                },
                fragment: Some(wgpu::FragmentState {
                    module: &shader,
                    entry_point: Some(fragment),
                    compilation_options: Default::default(),
                    targets: &[Some(format.into())],
                }),
                multiview_mask: None,
                cache: None,
            })
        };
        let faces = pipeline(wgpu::PrimitiveTopology::TriangleList, "fs_faces", 2);
        let edges = pipeline(wgpu::PrimitiveTopology::LineList, "fs_edges", 0);
        let (msaa, depth) = attachments(&device, format, width, height);
        let adapter_name = adapter.get_info().name;
        Ok(Self {
            device,
            queue,
            output,
            format,
            width,
            height,
            faces,
            edges,
            uniforms,
            bind_group,
            msaa,
            depth,
            mesh: None,
            adapter_name,
            _instance: instance,
            _adapter: adapter,
        })
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Frames are read back rather than presented.
    pub fn reads_back(&self) -> bool {
        matches!(self.output, Output::Readback)
    }

    pub fn resize(&mut self, width: u32, height: u32) {
        let (width, height) = (width.clamp(1, 8192), height.clamp(1, 8192));
        if (width, height) == self.size() {
            return;
        }
        (self.width, self.height) = (width, height);
        if let Output::Canvas { surface, config } = &mut self.output {
            config.width = width;
            config.height = height;
            surface.configure(&self.device, config);
        }
        (self.msaa, self.depth) = attachments(&self.device, self.format, width, height);
    }

    pub fn has_mesh(&self) -> bool {
        self.mesh.is_some()
    }

    pub fn set_mesh(&mut self, mesh: &MeshData) -> Result<(), String> {
        mesh.check()?;
        let n = mesh.vertex_count();
        let mut bytes = Vec::with_capacity(n * VERTEX_STRIDE as usize);
        for v in 0..n {
            for x in &mesh.positions[v * 3..v * 3 + 3] {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            for x in &mesh.normals[v * 3..v * 3 + 3] {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            match mesh.colors.get(v * 4..v * 4 + 4) {
                Some(rgba) => bytes.extend_from_slice(rgba),
                None => bytes.extend_from_slice(&[255; 4]),
            }
        }
        let buffer = |label, contents: &[u8], usage| {
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    // WebGPU wants buffer sizes in multiples of 4 and non-zero.
                    contents: if contents.is_empty() {
                        &[0; 4]
                    } else {
                        contents
                    },
                    usage,
                })
        };
        let edge_indices = mesh.edges();
        let (center, radius) = mesh.framing();
        self.mesh = Some(GpuMesh {
            vertices: buffer("vertices", &bytes, wgpu::BufferUsages::VERTEX),
            triangles: buffer(
                "triangles",
                bytemuck::cast_slice(&mesh.indices),
                wgpu::BufferUsages::INDEX,
            ),
            triangle_count: mesh.indices.len() as u32,
            edges: buffer(
                "edges",
                bytemuck::cast_slice(&edge_indices),
                wgpu::BufferUsages::INDEX,
            ),
            edge_count: edge_indices.len() as u32,
            model: Mat4::from_scale(Vec3::splat(1.0 / radius)) * Mat4::from_translation(-center),
            has_colors: !mesh.colors.is_empty(),
        });
        Ok(())
    }

    pub fn clear_mesh(&mut self) {
        self.mesh = None;
    }

    fn write_uniforms(&self, camera: &OrbitCamera, mode: ViewMode) {
        let (width, height) = self.size();
        let view_proj = camera.projection(width as f32 / height as f32) * camera.view();
        let model = self.mesh.as_ref().map_or(Mat4::IDENTITY, |m| m.model);
        let has_colors = self.mesh.as_ref().is_some_and(|m| m.has_colors);
        let mode = match mode {
            ViewMode::Shaded => 0.0,
            ViewMode::Wireframe => 1.0,
            ViewMode::Normals => 2.0,
        };
        let mut data = [0f32; (UNIFORM_BYTES / 4) as usize];
        data[..16].copy_from_slice(&view_proj.to_cols_array());
        data[16..32].copy_from_slice(&model.to_cols_array());
        data[32..35].copy_from_slice(&camera.eye().to_array());
        data[36] = mode;
        data[37] = if has_colors { 1.0 } else { 0.0 };
        self.queue
            .write_buffer(&self.uniforms, 0, bytemuck::cast_slice(&data));
    }

    fn encode(&self, target: &wgpu::TextureView, mode: ViewMode) -> wgpu::CommandBuffer {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("viewer"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &self.msaa,
                    depth_slice: None,
                    resolve_target: Some(target),
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(BACKGROUND),
                        store: wgpu::StoreOp::Discard,
                    },
                })],
                depth_stencil_attachment: Some(wgpu::RenderPassDepthStencilAttachment {
                    view: &self.depth,
                    depth_ops: Some(wgpu::Operations {
                        load: wgpu::LoadOp::Clear(1.0),
                        store: wgpu::StoreOp::Discard,
                    }),
                    stencil_ops: None,
                }),
                ..Default::default()
            });
            if let Some(mesh) = &self.mesh {
                pass.set_bind_group(0, &self.bind_group, &[]);
                pass.set_vertex_buffer(0, mesh.vertices.slice(..));
                pass.set_pipeline(&self.faces);
                pass.set_index_buffer(mesh.triangles.slice(..), wgpu::IndexFormat::Uint32);
                pass.draw_indexed(0..mesh.triangle_count, 0, 0..1);
                if mode == ViewMode::Wireframe {
                    pass.set_pipeline(&self.edges);
                    pass.set_index_buffer(mesh.edges.slice(..), wgpu::IndexFormat::Uint32);
                    pass.draw_indexed(0..mesh.edge_count, 0, 0..1);
                }
            }
        }
        encoder.finish()
    }

    /// Draw one frame on the canvas (direct output only; see [`Self::draw_to_buffer`]).
    pub fn render(&mut self, camera: &OrbitCamera, mode: ViewMode) -> Result<(), String> {
        let Output::Canvas { surface, config } = &self.output else {
            return Err("render: this viewer reads its frames back".into());
        };
        let frame = match surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(frame)
            | wgpu::CurrentSurfaceTexture::Suboptimal(frame) => frame,
            wgpu::CurrentSurfaceTexture::Timeout | wgpu::CurrentSurfaceTexture::Occluded => {
                return Ok(());
            }
            other => {
                surface.configure(&self.device, config);
                return Err(format!("canvas surface: {other:?}"));
            }
        };
        self.write_uniforms(camera, mode);
        let view = frame.texture.create_view(&Default::default());
        self.queue.submit([self.encode(&view, mode)]);
        self.queue.present(frame);
        Ok(())
    }

    /// Render the current view into a texture and copy it into a mappable buffer.
    pub fn draw_to_buffer(&self, camera: &OrbitCamera, mode: ViewMode) -> PendingFrame {
        let (width, height) = self.size();
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("frame"),
            size: wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: self.format,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let row = (width * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT)
            * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("frame readback"),
            size: u64::from(row) * u64::from(height),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        self.write_uniforms(camera, mode);
        let draw = self.encode(&texture.create_view(&Default::default()), mode);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.copy_texture_to_buffer(
            texture.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row),
                    rows_per_image: Some(height),
                },
            },
            wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
        );
        self.queue.submit([draw, encoder.finish()]);
        PendingFrame {
            buffer,
            width,
            height,
            row,
            bgra: matches!(
                self.format,
                wgpu::TextureFormat::Bgra8Unorm | wgpu::TextureFormat::Bgra8UnormSrgb
            ),
        }
    }
}

impl PendingFrame {
    /// Wait for the GPU and return `(width, height, RGBA rows)`.
    pub async fn read(self) -> Result<(u32, u32, Vec<u8>), String> {
        let (sender, receiver) = futures::channel::oneshot::channel();
        self.buffer
            .map_async(wgpu::MapMode::Read, .., move |result| {
                let _ = sender.send(result);
            });
        receiver
            .await
            .map_err(|_| "frame readback: the GPU dropped it".to_string())?
            .map_err(|e| format!("frame readback: {e}"))?;
        let mapped = self
            .buffer
            .get_mapped_range(..)
            .map_err(|e| format!("frame readback: {e:?}"))?;
        let (width, row) = (self.width as usize, self.row as usize);
        let mut rgba = Vec::with_capacity(width * self.height as usize * 4);
        for y in 0..self.height as usize {
            let line = &mapped[y * row..y * row + width * 4];
            if self.bgra {
                for px in line.chunks_exact(4) {
                    rgba.extend_from_slice(&[px[2], px[1], px[0], px[3]]);
                }
            } else {
                rgba.extend_from_slice(line);
            }
        }
        drop(mapped);
        self.buffer.unmap();
        Ok((self.width, self.height, rgba))
    }
}

/// view_proj (16 floats), model (16), eye (4), params (4).
const UNIFORM_BYTES: u64 = 40 * 4;

fn attachments(
    device: &wgpu::Device,
    format: wgpu::TextureFormat,
    width: u32,
    height: u32,
) -> (wgpu::TextureView, wgpu::TextureView) {
    let texture = |label, format| {
        device
            .create_texture(&wgpu::TextureDescriptor {
                label: Some(label),
                size: wgpu::Extent3d {
                    width,
                    height,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: SAMPLES,
                dimension: wgpu::TextureDimension::D2,
                format,
                usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                view_formats: &[],
            })
            .create_view(&Default::default())
    };
    (texture("msaa", format), texture("depth", DEPTH_FORMAT))
}
