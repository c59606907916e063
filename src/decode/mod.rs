// TEMP placeholder (replaced by helper's module)
#[derive(Debug, Clone)]
pub struct Limits { pub max_instance_bytes: usize, pub max_rows: u32, pub max_cols: u32, pub max_frames: u32 }
impl Default for Limits { fn default() -> Self { Self { max_instance_bytes: 512<<20, max_rows: 8192, max_cols: 8192, max_frames: 4096 } } }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Photometric { Monochrome1, Monochrome2, Rgb }
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window { pub center: f64, pub width: f64 }
#[derive(Debug, Clone)]
pub struct InstanceMeta { pub sop_instance_uid: String, pub sop_class_uid: String, pub study_instance_uid: String, pub series_instance_uid: String, pub patient_id: Option<String>, pub transfer_syntax: String, pub modality: Option<String>, pub rows: u32, pub cols: u32, pub number_of_frames: u32, pub samples_per_pixel: u16, pub bits_allocated: u16, pub bits_stored: u16, pub pixel_representation: u16, pub photometric: Photometric, pub photometric_original: String, pub pixel_spacing: Option<[f64;2]>, pub image_position: Option<[f64;3]>, pub image_orientation: Option<[f64;6]>, pub instance_number: Option<i32>, pub rescale_slope: f64, pub rescale_intercept: f64, pub window: Option<Window> }
#[derive(Debug, Clone)]
pub struct Frame { pub pixels: Vec<f32>, pub min: f32, pub max: f32 }
#[derive(Debug, Clone)]
pub struct DecodedInstance { pub meta: InstanceMeta, pub frames: Vec<Frame> }
#[derive(Debug, thiserror::Error)]
pub enum DecodeError { #[error("x")] NotDicom{detail:String}, #[error("x")] Malformed{detail:String}, #[error("x")] TooLarge{bytes:usize,limit:usize}, #[error("x")] DimensionsTooLarge{rows:u32}, #[error("x")] MissingAttribute{name:&'static str}, #[error("x")] MissingPixelData, #[error("x")] UnsupportedTransferSyntax{uid:String,name:String}, #[error("x")] UnsupportedPixelFormat{detail:String}, #[error("x")] PixelDecode{transfer_syntax:String, detail:String} }
impl DecodeError { pub fn code(&self) -> &'static str { "x" } }
#[derive(Debug)]
pub struct Rejection { pub sop_instance_uid: Option<String>, pub study_instance_uid: Option<String>, pub error: DecodeError }
pub fn decode_instance(_b: &[u8], _l: &Limits) -> Result<DecodedInstance, Rejection> { Err(Rejection{sop_instance_uid:None, study_instance_uid:None, error: DecodeError::MissingPixelData}) }
