"""bwtf.data.annotations: bounding-box XML is parsed safely into normalized, clipped boxes."""
import pytest

from bwtf.data import annotations

_XML = b"""<annotation><size><width>200</width><height>100</height></size>
<object><name>n01440764</name><bndbox><xmin>20</xmin><ymin>10</ymin><xmax>120</xmax><ymax>60</ymax></bndbox></object>
<object><name>n01440764</name><bndbox><xmin>-5</xmin><ymin>50</ymin><xmax>260</xmax><ymax>130</ymax></bndbox></object>
</annotation>"""

_BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename></annotation>"""

_EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY secret SYSTEM "file:///etc/passwd">]><annotation><filename>&secret;</filename></annotation>"""


def test_boxes_are_normalized_clipped_and_in_tfds_order():
    annotation = annotations.parse(_XML)
    assert annotation.names == ("n01440764", "n01440764")
    boxes = annotations.normalized_boxes(annotation, image_width=999, image_height=999)
    # (ymin, xmin, ymax, xmax); the XML's own size wins over the image's.
    assert boxes == [pytest.approx((0.1, 0.1, 0.6, 0.6)), pytest.approx((0.5, 0.0, 1.0, 1.0))]


def test_missing_size_falls_back_to_the_image_size():
    xml = _XML.replace(b"<size><width>200</width><height>100</height></size>", b"")
    boxes = annotations.normalized_boxes(annotations.parse(xml), image_width=400, image_height=200)
    assert boxes[0] == pytest.approx((0.05, 0.05, 0.3, 0.3))


def test_empty_and_inverted_boxes_are_dropped_or_ordered():
    xml = _XML.replace(b"<xmax>120</xmax>", b"<xmax>20</xmax>").replace(b"<ymax>130</ymax>", b"<ymax>0</ymax>")
    boxes = annotations.normalized_boxes(annotations.parse(xml), 200, 100)
    assert boxes == [pytest.approx((0.0, 0.0, 0.5, 1.0))]


@pytest.mark.parametrize("xml, reason", [
    (_BILLION_LAUGHS, "unsafe XML refused"),
    (_EXTERNAL_ENTITY, "unsafe XML refused"),
    (b"<annotation><object>", "malformed XML"),
    (b"", "malformed XML"),
    (_XML.replace(b"<xmin>20</xmin>", b"<xmin>twenty</xmin>"), "<xmin> should be a finite number"),
    (_XML.replace(b"<xmin>20</xmin>", b"<xmin>nan</xmin>"), "<xmin> should be a finite number"),
    (_XML.replace(b"<xmax>120</xmax>", b"<xmax>1e999</xmax>"), "<xmax> should be a finite number"),
    (_XML.replace(b"<ymax>60</ymax>", b""), "missing <ymax>"),
    (b'<?xml version="1.0" encoding="x-no-such-codec"?>' + _XML, "encoding"),
], ids=["billion-laughs", "external-entity", "unclosed", "empty", "not-a-number", "nan", "overflow",
        "missing-field", "unknown-encoding"])
def test_bad_xml_raises_annotation_error(xml, reason):
    with pytest.raises(annotations.AnnotationError, match=reason):
        annotations.parse(xml)


@pytest.mark.parametrize("size", [b"nan", b"inf", b"1e999", b"-inf"])
def test_a_size_that_is_not_finite_falls_back_to_the_image_size(size):
    xml = _XML.replace(b"<width>200</width>", b"<width>" + size + b"</width>")
    annotation = annotations.parse(xml)
    assert (annotation.width, annotation.height) == (0, 0)


def test_only_the_images_own_synset_is_kept_and_reversed_corners_are_counted():
    xml = _XML.replace(b"<name>n01440764</name><bndbox><xmin>-5", b"<name>n02119789</name><bndbox><xmin>-5")
    kept, dropped = annotations.of_synset(annotations.parse(xml), "n01440764")
    assert dropped == 1 and kept.names == ("n01440764",) and kept.boxes == ((20.0, 10.0, 120.0, 60.0),)
    swapped = annotations.parse(_XML.replace(b"<xmin>20</xmin>", b"<xmin>150</xmin>"))
    assert annotations.reversed_corners(swapped) == 1
