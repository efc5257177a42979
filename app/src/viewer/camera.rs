//! The viewer's orbit camera: yaw/pitch/distance around a target, panned in the view plane,
//! turning by itself (turntable) once the user has left it alone for a while. Pure math, so it
//! is tested natively; the render worker owns one and the UI sends it input deltas.

use glam::{Mat4, Vec3};

/// Seconds without input before the turntable starts.
pub const IDLE_BEFORE_TURNTABLE_S: f64 = 3.0;
/// Turntable speed, radians per second.
const TURNTABLE_RAD_PER_S: f32 = 0.5;
/// Radians per CSS pixel of drag.
const ORBIT_RAD_PER_PX: f32 = 0.008;
const MIN_DISTANCE: f32 = 0.3;
const MAX_DISTANCE: f32 = 20.0;
/// The pitch stops short of the poles, where yaw would spin the view about its own axis.
const MAX_PITCH: f32 = 1.55;

#[derive(Debug, Clone, PartialEq)]
pub struct OrbitCamera {
    pub yaw: f32,
    pub pitch: f32,
    pub distance: f32,
    pub target: Vec3,
    /// Vertical field of view, radians.
    pub fov_y: f32,
    /// Time of the last user input (seconds, the caller's clock).
    last_input_s: f64,
}

impl Default for OrbitCamera {
    /// Slightly above and to the side, framing a unit sphere at the origin.
    fn default() -> Self {
        Self {
            yaw: 0.6,
            pitch: 0.35,
            distance: 3.2,
            target: Vec3::ZERO,
            fov_y: 40f32.to_radians(),
            last_input_s: 0.0,
        }
    }
}

impl OrbitCamera {
    /// Drag by (dx, dy) CSS pixels: right turns the object right, down tilts it towards you.
    pub fn orbit(&mut self, dx: f32, dy: f32, now_s: f64) {
        self.yaw -= dx * ORBIT_RAD_PER_PX;
        self.pitch = (self.pitch + dy * ORBIT_RAD_PER_PX).clamp(-MAX_PITCH, MAX_PITCH);
        self.last_input_s = now_s;
    }

    /// Move the target in the view plane so the object follows a drag of (dx, dy) pixels on a
    /// viewport `viewport_height` pixels tall.
    pub fn pan(&mut self, dx: f32, dy: f32, viewport_height: f32, now_s: f64) {
        let world_per_px =
            2.0 * self.distance * (self.fov_y / 2.0).tan() / viewport_height.max(1.0);
        let (right, up) = self.right_up();
        self.target += (-dx * right + dy * up) * world_per_px;
        self.last_input_s = now_s;
    }

    /// Zoom by a factor (> 1 moves closer), e.g. from the wheel or a pinch.
    pub fn zoom(&mut self, factor: f32, now_s: f64) {
        if factor.is_finite() && factor > 0.0 {
            self.distance = (self.distance / factor).clamp(MIN_DISTANCE, MAX_DISTANCE);
        }
        self.last_input_s = now_s;
    }

    /// Back to the default view (the turntable waits again).
    pub fn reset(&mut self, now_s: f64) {
        *self = Self {
            last_input_s: now_s,
            ..Self::default()
        };
    }

    /// Whether the turntable is turning at `now_s`.
    pub fn turntable(&self, now_s: f64) -> bool {
        now_s - self.last_input_s >= IDLE_BEFORE_TURNTABLE_S
    }

    /// Advance the turntable by `dt_s` seconds when idle.
    pub fn tick(&mut self, now_s: f64, dt_s: f64) {
        if self.turntable(now_s) {
            self.yaw += TURNTABLE_RAD_PER_S * dt_s as f32;
        }
    }

    pub fn eye(&self) -> Vec3 {
        let (sy, cy) = self.yaw.sin_cos();
        let (sp, cp) = self.pitch.sin_cos();
        self.target + self.distance * Vec3::new(cp * sy, sp, cp * cy)
    }

    fn right_up(&self) -> (Vec3, Vec3) {
        let forward = (self.target - self.eye()).normalize();
        let right = forward.cross(Vec3::Y).normalize();
        (right, right.cross(forward))
    }

    pub fn view(&self) -> Mat4 {
        Mat4::look_at_rh(self.eye(), self.target, Vec3::Y)
    }

    /// Projection for WebGPU's clip space (depth 0..1).
    pub fn projection(&self, aspect: f32) -> Mat4 {
        let near = (self.distance * 0.01).max(0.001);
        Mat4::perspective_rh(self.fov_y, aspect.max(1e-3), near, self.distance + 50.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glam::Vec4Swizzles;

    fn to_ndc(camera: &OrbitCamera, point: Vec3) -> Vec3 {
        let clip = camera.projection(1.0) * camera.view() * point.extend(1.0);
        clip.xyz() / clip.w
    }

    #[test]
    fn the_default_view_frames_the_unit_sphere() {
        let camera = OrbitCamera::default();
        assert!((camera.eye().length() - camera.distance).abs() < 1e-5);
        for p in [Vec3::X, -Vec3::X, Vec3::Y, -Vec3::Y, Vec3::Z, -Vec3::Z] {
            let ndc = to_ndc(&camera, p);
            assert!(ndc.x.abs() < 1.0 && ndc.y.abs() < 1.0, "{p} → {ndc}");
            assert!((0.0..1.0).contains(&ndc.z), "{p} depth {ndc}");
        }
    }

    #[test]
    fn dragging_right_turns_the_front_of_the_object_right() {
        let mut camera = OrbitCamera::default();
        let facing = camera.eye().normalize(); // the point of the object facing the camera
        let before = to_ndc(&camera, facing);
        camera.orbit(40.0, 0.0, 0.0);
        let after = to_ndc(&camera, facing);
        assert!(after.x > before.x + 0.05, "{before} → {after}");
    }

    #[test]
    fn pitch_stops_short_of_the_poles() {
        let mut camera = OrbitCamera::default();
        camera.orbit(0.0, 1e6, 0.0);
        assert!(camera.pitch <= MAX_PITCH);
        assert!(camera.view().is_finite());
        camera.orbit(0.0, -1e6, 0.0);
        assert!(camera.pitch >= -MAX_PITCH);
    }

    #[test]
    fn pan_moves_the_object_with_the_pointer_by_the_same_pixels() {
        let mut camera = OrbitCamera::default();
        let height = 600.0;
        let before = to_ndc(&camera, Vec3::ZERO);
        camera.pan(60.0, 0.0, height, 0.0);
        let after = to_ndc(&camera, Vec3::ZERO);
        // NDC spans 2 over `height` pixels; the target's plane moves exactly with the drag.
        let moved_px = (after.x - before.x) / 2.0 * height;
        assert!((moved_px - 60.0).abs() < 0.5, "moved {moved_px} px");
        camera.pan(0.0, 30.0, height, 0.0);
        let down = to_ndc(&camera, Vec3::ZERO);
        assert!(down.y < after.y, "dragging down moves the object down");
    }

    #[test]
    fn zoom_is_clamped_and_ignores_nonsense() {
        let mut camera = OrbitCamera::default();
        camera.zoom(2.0, 0.0);
        assert!((camera.distance - 1.6).abs() < 1e-5);
        camera.zoom(1e9, 0.0);
        assert_eq!(camera.distance, MIN_DISTANCE);
        camera.zoom(1e-9, 0.0);
        assert_eq!(camera.distance, MAX_DISTANCE);
        camera.zoom(f32::NAN, 0.0);
        camera.zoom(0.0, 0.0);
        assert_eq!(camera.distance, MAX_DISTANCE);
    }

    #[test]
    fn the_turntable_starts_after_three_idle_seconds_and_input_stops_it() {
        let mut camera = OrbitCamera::default();
        camera.orbit(1.0, 0.0, 10.0);
        let yaw = camera.yaw;
        camera.tick(12.9, 1.0);
        assert_eq!(camera.yaw, yaw, "still within the idle delay");
        camera.tick(13.0, 1.0);
        assert!(camera.yaw > yaw, "turning after 3 s");
        camera.zoom(1.1, 13.5);
        let yaw = camera.yaw;
        camera.tick(14.0, 0.5);
        assert_eq!(camera.yaw, yaw, "input restarts the delay");
    }

    #[test]
    fn reset_restores_the_default_view() {
        let mut camera = OrbitCamera::default();
        camera.orbit(100.0, 50.0, 1.0);
        camera.pan(10.0, 10.0, 500.0, 1.0);
        camera.zoom(3.0, 1.0);
        camera.reset(2.0);
        let default = OrbitCamera::default();
        assert_eq!(
            (camera.yaw, camera.pitch, camera.distance),
            (default.yaw, default.pitch, default.distance)
        );
        assert_eq!(camera.target, default.target);
        assert!(!camera.turntable(4.0));
    }
}
