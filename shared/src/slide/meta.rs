//! What a slide says about itself: who wrote it and the size of its pixels (microns per pixel).

use super::tiff::Page;

/// Who wrote the slide, as far as its first image's description says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlideFormat {
    /// Aperio SVS (ImageDescription starting with "Aperio").
    Aperio,
    /// OME-TIFF (OME-XML in the ImageDescription).
    OmeTiff,
    /// Any other TIFF or BigTIFF.
    GenericTiff,
}

impl SlideFormat {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            SlideFormat::Aperio => "Aperio SVS",
            SlideFormat::OmeTiff => "OME-TIFF",
            SlideFormat::GenericTiff => "TIFF",
        }
    }
}

/// The format a first page's description reveals.
pub(crate) fn format_of(first: &Page) -> SlideFormat {
    let d = first.description.trim_start();
    if d.starts_with("Aperio") {
        SlideFormat::Aperio
    } else if d.contains("<OME") {
        SlideFormat::OmeTiff
    } else {
        SlideFormat::GenericTiff
    }
}

/// Microns per pixel of level 0: Aperio's `MPP = x`, OME's `PhysicalSizeX`, else the TIFF
/// resolution tags when they are in centimetres or inches and plausible for a microscope
/// (0.01–100 µm; the 72 dpi many writers put there by default is 353 µm).
pub(crate) fn microns_per_pixel(first: &Page, format: SlideFormat) -> Option<f64> {
    let from_text = match format {
        SlideFormat::Aperio => aperio_field(&first.description, "MPP"),
        SlideFormat::OmeTiff => ome_physical_size_x(&first.description),
        SlideFormat::GenericTiff => None,
    };
    let plausible = |v: f64| v.is_finite() && (0.01..=100.0).contains(&v);
    if let Some(v) = from_text.filter(|&v| plausible(v)) {
        return Some(v);
    }
    let res = first.x_resolution.filter(|r| *r > 0.0)?;
    let mpp = match first.resolution_unit {
        2 => 25_400.0 / res,
        3 => 10_000.0 / res,
        _ => return None,
    };
    plausible(mpp).then_some(mpp)
}

/// The value of `key = value` in an Aperio description (`Aperio Image Library ...|AppMag =
/// 20|MPP = 0.4990|...`).
pub(crate) fn aperio_field(description: &str, key: &str) -> Option<f64> {
    description.split('|').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        if k.trim().eq_ignore_ascii_case(key) {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// `PhysicalSizeX` of the first `<Pixels>` element of OME-XML, in microns.
fn ome_physical_size_x(xml: &str) -> Option<f64> {
    let start = xml.find("<Pixels")?;
    let element = &xml[start..start + xml[start..].find('>')?];
    let value: f64 = xml_attribute(element, "PhysicalSizeX")?.parse().ok()?;
    let scale = match xml_attribute(element, "PhysicalSizeXUnit").as_deref() {
        None | Some("µm") | Some("um") | Some("μm") | Some("micron") => 1.0,
        Some("nm") => 1e-3,
        Some("mm") => 1e3,
        Some("cm") => 1e4,
        Some("m") => 1e6,
        Some(_) => return None,
    };
    Some(value * scale)
}

fn xml_attribute(element: &str, name: &str) -> Option<String> {
    let mut rest = element;
    loop {
        let at = rest.find(name)?;
        let before_ok = at == 0 || rest.as_bytes()[at - 1].is_ascii_whitespace();
        let after = rest[at + name.len()..].trim_start();
        if before_ok {
            if let Some(v) = after.strip_prefix('=') {
                let v = v.trim_start();
                let quote = v.chars().next()?;
                if quote == '"' || quote == '\'' {
                    let end = v[1..].find(quote)?;
                    return Some(v[1..1 + end].to_string());
                }
            }
        }
        rest = &rest[at + name.len()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aperio_description_gives_mpp_and_magnification() {
        let d = "Aperio Image Library v11.2.1 \r\n46000x32914 [42673,5576 2220x2967] (240x240) \
                 JPEG/RGB Q=30;Aperio Image Library v10.0.51\r\n46920x33014 [0,100 46000x32914] \
                 (256x256) JPEG/RGB Q=30|AppMag = 20|StripeWidth = 2040|ScanScope ID = CPAPERIOCS\
                 |MPP = 0.4990|Left = 25.691574";
        assert_eq!(aperio_field(d, "MPP"), Some(0.499));
        assert_eq!(aperio_field(d, "AppMag"), Some(20.0));
        assert_eq!(aperio_field(d, "Nope"), None);
    }

    #[test]
    fn ome_physical_size_with_units() {
        let xml = r#"<?xml version="1.0"?><OME><Image ID="Image:0"><Pixels BigEndian="false" DimensionOrder="XYCZT" ID="Pixels:0" PhysicalSizeX="0.2628" PhysicalSizeY="0.2628" SizeC="3"></Pixels></Image></OME>"#;
        assert_eq!(ome_physical_size_x(xml), Some(0.2628));
        let nm = r#"<OME><Pixels PhysicalSizeXUnit="nm" PhysicalSizeX="250"/></OME>"#;
        assert!((ome_physical_size_x(nm).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(
            ome_physical_size_x("<OME><Pixels SizeX=\"3\"/></OME>"),
            None
        );
    }
}
