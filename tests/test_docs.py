"""Documentation that is generated from the code matches what is committed."""
from tests.helpers import ROOT
from trebuchet.settings import README, TrebuchetSettings, readme_with_table


def test_the_trebuchet_readme_table_is_the_generated_one():
    readme = README.read_text()
    assert README == ROOT / "trebuchet" / "README.md"
    assert readme_with_table(readme) == readme, "run: python -m trebuchet.settings --readme"
    for f in TrebuchetSettings.fields():
        assert f"`{f.metadata['env']}`" in readme
