"""The listing: recursive, sorted, case-insensitive extensions, paths relative and /-separated."""
from estimator_vgg.listing import list_images


def test_lists_images_recursively_sorted_with_relative_paths(tmp_path):
    for rel in ["b.jpg", "a/z.PNG", "a/b/c.jpeg", "notes.txt", "a/Ω.gif", "x.JpG", "noext"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert list_images(tmp_path, ["jpg", "jpeg", "png", "gif"]) == \
        ["a/b/c.jpeg", "a/z.PNG", "a/Ω.gif", "b.jpg", "x.JpG"]


def test_extensions_may_be_given_with_a_dot_or_in_capitals(tmp_path):
    (tmp_path / "a.bmp").write_bytes(b"")
    assert list_images(tmp_path, [".BMP"]) == ["a.bmp"]
