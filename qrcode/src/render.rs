//! QR images (SVG and PNG) and the printable code plate.
//!
//! Codes are drawn with the `qrcode` crate at error-correction level M with the 4-module quiet
//! zone (non-ASCII payloads declare UTF-8 with ECI 26); PNGs are 8-bit greyscale encoded by `image` (PNG only).
//!
//! The plate shows, top to bottom: the merchant name, the store name, the QR, the fixed amount (for
//! fixed-amount codes) and the accepted wallets as text (e.g. "微信 · 支付宝 · 云闪付 · 数字人民币").
//!
//! - [`plate_svg`] writes the text as SVG `<text>` in the system's CJK sans-serif fonts (the viewer
//!   or printer renders it); the QR is one `<path>`.
//! - [`plate_png`] draws the text itself with `ab_glyph` from a font file found at run time: the file
//!   named by `PAYMUX_PLATE_FONT`, else the first of [`FONT_CANDIDATES`] that exists (Debian
//!   `fonts-wqy-zenhei`, `fonts-noto-cjk`, `fonts-wqy-microhei`, then DejaVu Sans). A line is drawn in
//!   Chinese when the font has every glyph of it, otherwise its ASCII form (wallet names in English,
//!   `CNY 12.30`), and characters the font lacks are left out. With no font at all the plate is the
//!   QR alone and [`PlatePng::text_drawn`] is false.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use image::{GrayImage, ImageEncoder, Luma};
use paymux_model::{Currency, Money, WalletBrand};
use qrcode::bits::Bits;
use qrcode::{Color, EcLevel, QrCode, Version};

/// Font files tried in order by [`plate_png`] when `PAYMUX_PLATE_FONT` is not set.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
];

const QUIET_ZONE_MODULES: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the payload does not fit in a QR code at error-correction level M")]
    DataTooLong,
    #[error("scale must be 1 to 64 pixels per module, got {0}")]
    BadScale(u32),
    #[error("PNG encoding failed: {0}")]
    Png(String),
}

/// The payload's QR at level M. A non-ASCII payload is one byte-mode segment preceded by the ECI
/// designator 26 (UTF-8), so that readers do not guess another charset (zbar, for one, reads
/// undeclared UTF-8 bytes as Shift JIS); an ASCII payload uses the smallest mix of segments.
fn qr(payload: &str) -> Result<QrCode, RenderError> {
    if payload.is_ascii() {
        return QrCode::with_error_correction_level(payload.as_bytes(), EcLevel::M)
            .map_err(|_| RenderError::DataTooLong);
    }
    for version in 1..=40 {
        let mut bits = Bits::new(Version::Normal(version));
        let fits = bits.push_eci_designator(UTF8_ECI).is_ok()
            && bits.push_byte_data(payload.as_bytes()).is_ok()
            && bits.push_terminator(EcLevel::M).is_ok();
        if fits {
            return QrCode::with_bits(bits, EcLevel::M).map_err(|_| RenderError::DataTooLong);
        }
    }
    Err(RenderError::DataTooLong)
}

/// ECI assignment number of UTF-8.
const UTF8_ECI: u32 = 26;

/// The QR of `payload` as a standalone SVG document (at least 256 px wide, quiet zone included).
pub fn svg(payload: &str) -> Result<String, RenderError> {
    Ok(qr(payload)?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build())
}

/// The QR of `payload` as a greyscale PNG, `scale` pixels per module (1–64), quiet zone included.
pub fn png(payload: &str, scale: u32) -> Result<Vec<u8>, RenderError> {
    check_scale(scale)?;
    let image = qr(payload)?
        .render::<Luma<u8>>()
        .quiet_zone(true)
        .module_dimensions(scale, scale)
        .build();
    encode_png(&image)
}

fn check_scale(scale: u32) -> Result<(), RenderError> {
    if (1..=64).contains(&scale) {
        Ok(())
    } else {
        Err(RenderError::BadScale(scale))
    }
}

fn encode_png(image: &GrayImage) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::L8,
        )
        .map_err(|e| RenderError::Png(e.to_string()))?;
    Ok(out)
}

/// The Chinese name of a wallet as printed on plates.
pub fn wallet_label_zh(wallet: WalletBrand) -> &'static str {
    match wallet {
        WalletBrand::Wechat => "微信",
        WalletBrand::Alipay => "支付宝",
        WalletBrand::Unionpay => "云闪付",
        WalletBrand::Ecny => "数字人民币",
        WalletBrand::Paymux => "Paymux 钱包",
        WalletBrand::Card => "银行卡",
    }
}

/// The ASCII name of a wallet, used when no CJK font is available.
pub fn wallet_label_en(wallet: WalletBrand) -> &'static str {
    match wallet {
        WalletBrand::Wechat => "WeChat Pay",
        WalletBrand::Alipay => "Alipay",
        WalletBrand::Unionpay => "UnionPay",
        WalletBrand::Ecny => "e-CNY",
        WalletBrand::Paymux => "Paymux Wallet",
        WalletBrand::Card => "Bank card",
    }
}

/// What a printable code plate shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plate {
    pub merchant_name: String,
    pub store_name: Option<String>,
    /// The text encoded in the QR (an EMV payload or a URL).
    pub payload: String,
    /// The wallets that can pay, in display order.
    pub wallets: Vec<WalletBrand>,
    /// The fixed amount of a fixed-amount code.
    pub amount: Option<Money>,
}

impl Plate {
    fn wallets_zh(&self) -> String {
        let names: Vec<&str> = self.wallets.iter().map(|w| wallet_label_zh(*w)).collect();
        names.join(" · ")
    }

    fn wallets_en(&self) -> String {
        let names: Vec<&str> = self.wallets.iter().map(|w| wallet_label_en(*w)).collect();
        names.join(" / ")
    }

    fn amount_zh(&self) -> Option<String> {
        self.amount.map(|m| match m.currency() {
            Currency::Cny => format!("¥{}", m.format_major()),
            other => format!("{} {}", other.code(), m.format_major()),
        })
    }

    fn amount_en(&self) -> Option<String> {
        self.amount
            .map(|m| format!("{} {}", m.currency().code(), m.format_major()))
    }
}

/// Text safe in XML and HTML content and quoted attribute values (control characters dropped).
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

const SVG_FONTS: &str = "'Noto Sans CJK SC','Source Han Sans SC','WenQuanYi Zen Hei','PingFang SC','Microsoft YaHei',sans-serif";

/// The plate as an SVG document (units are px at 96 dpi; about 10 × 14 cm).
pub fn plate_svg(plate: &Plate) -> Result<String, RenderError> {
    let code = qr(&plate.payload)?;
    let modules = code.width();
    let colors = code.to_colors();
    let width = 400usize;
    let qr_px = 320usize;
    let qr_x = (width - qr_px) / 2;
    let mut y = 56usize;
    let mut body = String::new();
    let text = |body: &mut String, y: usize, size: usize, weight: &str, s: &str| {
        let _ = writeln!(
            body,
            r#"<text x="{x}" y="{y}" font-size="{size}" font-weight="{weight}" text-anchor="middle">{t}</text>"#,
            x = width / 2,
            t = xml_escape(s)
        );
    };
    text(&mut body, y, 28, "bold", &plate.merchant_name);
    if let Some(store) = &plate.store_name {
        y += 32;
        text(&mut body, y, 18, "normal", store);
    }
    y += 20;
    // The QR: quiet zone included in its box, dark modules as one path in module units.
    let total = modules + 2 * QUIET_ZONE_MODULES;
    let mut path = String::new();
    for (i, c) in colors.iter().enumerate() {
        if *c == Color::Dark {
            let (mx, my) = (
                i % modules + QUIET_ZONE_MODULES,
                i / modules + QUIET_ZONE_MODULES,
            );
            let _ = write!(path, "M{mx} {my}h1v1h-1z");
        }
    }
    let _ = writeln!(
        body,
        r##"<svg x="{qr_x}" y="{y}" width="{qr_px}" height="{qr_px}" viewBox="0 0 {total} {total}" shape-rendering="crispEdges"><rect width="{total}" height="{total}" fill="#fff"/><path d="{path}" fill="#000"/></svg>"##
    );
    y += qr_px;
    if let Some(amount) = plate.amount_zh() {
        y += 44;
        text(&mut body, y, 32, "bold", &amount);
    }
    if !plate.wallets.is_empty() {
        y += 36;
        text(&mut body, y, 18, "normal", &plate.wallets_zh());
    }
    let height = y + 32;
    Ok(format!(
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="{SVG_FONTS}">
<rect x="1" y="1" width="{w2}" height="{h2}" rx="12" fill="#fff" stroke="#222" stroke-width="2"/>
{body}</svg>
"##,
        w2 = width - 2,
        h2 = height - 2,
    ))
}

/// A rendered PNG plate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatePng {
    pub png: Vec<u8>,
    /// False when no font was found and the plate holds only the QR.
    pub text_drawn: bool,
    /// The font file used, if any.
    pub font: Option<PathBuf>,
}

/// Finds the plate font: `PAYMUX_PLATE_FONT`, else the first of [`FONT_CANDIDATES`] that loads.
pub fn find_font() -> Option<(PathBuf, FontVec)> {
    let from_env = std::env::var_os("PAYMUX_PLATE_FONT").map(PathBuf::from);
    from_env
        .into_iter()
        .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
        .find_map(|path| load_font(&path).map(|f| (path, f)))
}

fn load_font(path: &Path) -> Option<FontVec> {
    let data = std::fs::read(path).ok()?;
    FontVec::try_from_vec_and_index(data, 0).ok()
}

/// The plate as a greyscale PNG; `scale` is pixels per QR module (1–64, 8 is good for print).
pub fn plate_png(plate: &Plate, scale: u32) -> Result<PlatePng, RenderError> {
    let font = find_font();
    plate_png_with_font(plate, scale, font.as_ref().map(|(_, f)| f)).map(|(png, text_drawn)| {
        PlatePng {
            png,
            text_drawn,
            font: font.map(|(p, _)| p),
        }
    })
}

/// As [`plate_png`] with a given font (or none); returns the PNG and whether text was drawn.
pub fn plate_png_with_font(
    plate: &Plate,
    scale: u32,
    font: Option<&FontVec>,
) -> Result<(Vec<u8>, bool), RenderError> {
    check_scale(scale)?;
    let code = qr(&plate.payload)?;
    let modules = code.width();
    let colors = code.to_colors();
    let module_px = scale as usize;
    let qr_px = (modules + 2 * QUIET_ZONE_MODULES) * module_px;
    // Text sizes follow the QR size so the plate keeps its proportions at any scale.
    let unit = (qr_px as f32 / 320.0).max(0.5);
    let width = qr_px + (80.0 * unit) as usize;
    let margin = ((width - qr_px) / 2) as u32;

    // Lines above and below the QR: (text, size in px).
    let mut above: Vec<(String, f32)> = Vec::new();
    let mut below: Vec<(String, f32)> = Vec::new();
    if let Some(font) = font {
        let pick = |zh: &str, en: &str| -> String {
            if has_all_glyphs(font, zh) {
                zh.to_string()
            } else {
                en.to_string()
            }
        };
        above.push((plate.merchant_name.clone(), 28.0 * unit));
        if let Some(store) = &plate.store_name {
            above.push((store.clone(), 18.0 * unit));
        }
        if let (Some(zh), Some(en)) = (plate.amount_zh(), plate.amount_en()) {
            below.push((pick(&zh, &en), 32.0 * unit));
        }
        if !plate.wallets.is_empty() {
            below.push((pick(&plate.wallets_zh(), &plate.wallets_en()), 18.0 * unit));
        }
    }
    let line_gap = 12.0 * unit;
    let block = |lines: &[(String, f32)]| -> u32 {
        lines
            .iter()
            .map(|(_, px)| px * 1.25 + line_gap)
            .sum::<f32>() as u32
    };
    let top = margin / 2 + block(&above);
    let height = top + qr_px as u32 + block(&below) + margin / 2;
    let mut image = GrayImage::from_pixel(width as u32, height, Luma([255]));

    // The QR, quiet zone included (the plate is white already).
    let qr_x = margin + (QUIET_ZONE_MODULES * module_px) as u32;
    let qr_y = top + (QUIET_ZONE_MODULES * module_px) as u32;
    for (i, c) in colors.iter().enumerate() {
        if *c != Color::Dark {
            continue;
        }
        let (mx, my) = (
            (i % modules * module_px) as u32,
            (i / modules * module_px) as u32,
        );
        for dy in 0..module_px as u32 {
            for dx in 0..module_px as u32 {
                image.put_pixel(qr_x + mx + dx, qr_y + my + dy, Luma([0]));
            }
        }
    }

    let text_drawn = font.is_some();
    if let Some(font) = font {
        let max_width = width as f32 - 2.0 * 16.0 * unit;
        let mut y = margin as f32 / 2.0;
        for (line, px) in &above {
            y += line_gap;
            draw_centered(&mut image, font, line, *px, y, max_width);
            y += px * 1.25;
        }
        let mut y = (top + qr_px as u32) as f32;
        for (line, px) in &below {
            draw_centered(&mut image, font, line, *px, y, max_width);
            y += px * 1.25 + line_gap;
        }
    }
    Ok((encode_png(&image)?, text_drawn))
}

fn has_all_glyphs(font: &FontVec, text: &str) -> bool {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .all(|c| font.glyph_id(c).0 != 0)
}

fn line_width(font: &FontVec, text: &str, px: f32) -> f32 {
    let scaled = font.as_scaled(PxScale::from(px));
    text.chars()
        .filter(|c| font.glyph_id(*c).0 != 0)
        .map(|c| scaled.h_advance(font.glyph_id(c)))
        .sum()
}

/// Draws one line centred horizontally with its top at `top`, shrunk to fit `max_width`; glyphs
/// the font lacks are left out.
fn draw_centered(
    image: &mut GrayImage,
    font: &FontVec,
    text: &str,
    px: f32,
    top: f32,
    max_width: f32,
) {
    let mut px = px;
    let natural = line_width(font, text, px);
    if natural > max_width && natural > 0.0 {
        px *= max_width / natural;
    }
    let scaled = font.as_scaled(PxScale::from(px));
    let mut x = (image.width() as f32 - line_width(font, text, px)) / 2.0;
    let baseline = top + scaled.ascent();
    for c in text.chars() {
        let id = font.glyph_id(c);
        if id.0 == 0 {
            continue;
        }
        let glyph = id.with_scale_and_position(px, ab_glyph::point(x, baseline));
        x += scaled.h_advance(id);
        let Some(outlined) = font.outline_glyph(glyph) else {
            continue;
        };
        let bounds = outlined.px_bounds();
        outlined.draw(|gx, gy, coverage| {
            let (ix, iy) = (
                bounds.min.x as i64 + i64::from(gx),
                bounds.min.y as i64 + i64::from(gy),
            );
            if ix < 0 || iy < 0 || ix >= i64::from(image.width()) || iy >= i64::from(image.height())
            {
                return;
            }
            let (ix, iy) = (ix as u32, iy as u32);
            let old = f32::from(image.get_pixel(ix, iy).0[0]);
            let new = old * (1.0 - coverage.clamp(0.0, 1.0));
            image.put_pixel(ix, iy, Luma([new.round() as u8]));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plate() -> Plate {
        Plate {
            merchant_name: "示例餐厅 <&>".into(),
            store_name: Some("南京路店".into()),
            payload: "https://pay.example.cn/s/ABC123".into(),
            wallets: vec![
                WalletBrand::Wechat,
                WalletBrand::Alipay,
                WalletBrand::Unionpay,
                WalletBrand::Ecny,
            ],
            amount: Some(Money::cny(1230)),
        }
    }

    #[test]
    fn svg_qr_is_an_svg_document() {
        let s = svg("hello").expect("fits");
        assert!(s.contains("<svg") && s.contains("</svg>"));
    }

    #[test]
    fn png_starts_with_the_png_signature_and_scales() {
        let small = png("hello", 2).expect("fits");
        let large = png("hello", 8).expect("fits");
        assert_eq!(&small[..8], b"\x89PNG\r\n\x1a\n");
        let dims = |b: &[u8]| image::load_from_memory(b).expect("decodes").width();
        // Version 1 is 21 modules, plus 4 quiet modules on each side.
        assert_eq!(dims(&small), 29 * 2);
        assert_eq!(dims(&large), 29 * 8);
        assert_eq!(png("hello", 0), Err(RenderError::BadScale(0)));
        assert_eq!(png(&"x".repeat(3000), 4), Err(RenderError::DataTooLong));
    }

    #[test]
    fn svg_plate_shows_names_amount_and_wallets_escaped() {
        let s = plate_svg(&plate()).expect("fits");
        assert!(s.contains("示例餐厅 &lt;&amp;&gt;"));
        assert!(s.contains("南京路店"));
        assert!(s.contains("¥12.30"));
        assert!(s.contains("微信 · 支付宝 · 云闪付 · 数字人民币"));
        let without = plate_svg(&Plate {
            amount: None,
            ..plate()
        })
        .expect("fits");
        assert!(!without.contains("¥"));
    }

    #[test]
    fn png_plate_without_a_font_is_the_qr_alone() {
        let (png, text) = plate_png_with_font(&plate(), 4, None).expect("fits");
        assert!(!text);
        assert!(image::load_from_memory(&png).is_ok());
    }
}

#[cfg(test)]
mod font_tests {
    use super::*;

    const DEJAVU: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    const WQY: &str = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc";

    #[test]
    fn a_latin_only_font_falls_back_to_ascii_lines() {
        let Some(dejavu) = load_font(Path::new(DEJAVU)) else {
            panic!("cannot load {DEJAVU}: install it with `apt-get install -y fonts-dejavu-core`")
        };
        let Some(wqy) = load_font(Path::new(WQY)) else {
            panic!("cannot load {WQY}: install it with `apt-get install -y fonts-wqy-zenhei`")
        };
        assert!(!has_all_glyphs(&dejavu, "微信 · 支付宝"));
        assert!(has_all_glyphs(&dejavu, "WeChat Pay / Alipay"));
        assert!(has_all_glyphs(
            &wqy,
            "微信 · 支付宝 · 云闪付 · 数字人民币 ¥12.30"
        ));
        let plate = Plate {
            merchant_name: "Shop 商店".into(),
            store_name: None,
            payload: "https://pay.example.cn/s/1".into(),
            wallets: vec![WalletBrand::Wechat, WalletBrand::Alipay],
            amount: Some(Money::cny(100)),
        };
        let (png, text) = plate_png_with_font(&plate, 4, Some(&dejavu)).expect("fits");
        assert!(text);
        assert!(image::load_from_memory(&png).is_ok());
        if let Some(out) = std::env::var_os("PAYMUX_PLATE_OUT") {
            std::fs::write(Path::new(&out).join("plate_latin_font.png"), &png).expect("keep");
        }
    }
}
