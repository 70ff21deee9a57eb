# Writes the small JPEGs of this folder (run here with Pillow; libjpeg-turbo 3.2.0 was used)
# and prints the CRC-32 of what Pillow decodes them to, as listed in preprocess/jpeg/tests.rs.
import zlib, numpy as np, io
from PIL import Image, features
print(features.version('libjpeg_turbo'))
rng=np.random.default_rng(7)
def img(w,h,mode='RGB'):
    y,x=np.mgrid[0:h,0:w]
    r=(128+100*np.sin(x/5.0+y/7.0)).astype(np.uint8)
    g=(128+90*np.cos(x/3.0-y/4.0)).astype(np.uint8)
    b=((x*7+y*3)%256).astype(np.uint8)
    a=np.stack([r,g,b],-1)
    a=np.clip(a.astype(int)+rng.integers(-30,30,a.shape),0,255).astype(np.uint8)
    im=Image.fromarray(a,'RGB')
    return im.convert(mode)
cases=[
 ('gray_37x29.jpg', img(37,29,'L'), dict(quality=90)),
 ('s422_41x23.jpg', img(41,23), dict(quality=85, subsampling='4:2:2')),
 ('s420_45x31_rst.jpg', img(45,31), dict(quality=80, subsampling='4:2:0', restart_marker_blocks=3)),
 ('s444_19x17_rst.jpg', img(19,17), dict(quality=95, subsampling='4:4:4', restart_marker_rows=1)),
 ('s420_3x5.jpg', img(3,5), dict(quality=90, subsampling='4:2:0')),
 ('s422_4x9.jpg', img(4,9), dict(quality=90, subsampling='4:2:2')),
 ('gray_rst_33x20.jpg', img(33,20,'L'), dict(quality=75, restart_marker_blocks=2)),
 ('progressive_24x16.jpg', img(24,16), dict(quality=90, progressive=True)),
 # CMYK: Pillow writes an Adobe marker (transform 0) and inverted samples.
 ('cmyk_29x21.jpg', img(29,21,'CMYK'), dict(quality=90)),
 ('cmyk_s420_35x27.jpg', img(35,27,'CMYK'), dict(quality=85, subsampling='4:2:0')),
]
for name,im,kw in cases:
    buf=io.BytesIO(); im.save(buf,'JPEG',**kw); d=buf.getvalue()
    open(name,'wb').write(d)
    rgb=Image.open(io.BytesIO(d)).convert('RGB')
    print(f'("{name}", {rgb.size[0]}, {rgb.size[1]}, 0x{zlib.crc32(rgb.tobytes()):08x}), // {len(d)} bytes')
