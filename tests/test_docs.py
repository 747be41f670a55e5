"""Documentation that is generated from the code matches what is committed."""
from tests.helpers import ROOT
from swarm_rl.settings import readme_with_table
from trebuchet.settings import README, TrebuchetSettings


def test_the_trebuchet_readme_table_is_the_generated_one():
    readme = README.read_text()
    assert README == ROOT / "trebuchet" / "README.md"
    assert readme_with_table(readme, TrebuchetSettings) == readme, "run: python -m trebuchet.settings --readme"
    for f in TrebuchetSettings.fields():
        assert f"`{f.metadata['env']}`" in readme
